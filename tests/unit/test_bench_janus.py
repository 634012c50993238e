"""``salon bench sfu --peer janus``: what it checks before it starts, and the Janus it configures."""

from __future__ import annotations

import pathlib
import shutil

import pytest

from salon.bench import janus
from salon.cli import main


def test_without_janus_the_benchmark_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(janus.shutil, "which", lambda name: None if name == "janus" else real_which(name))
    code = main(["bench", "sfu", "--peer", "janus", "--fan-outs", "1", "--runs", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""  # no report, nothing started
    assert "janus executable, which is not installed" in captured.err, captured.err
    assert "apt-get install --no-install-recommends janus" in captured.err, captured.err


def test_bad_fan_outs_are_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(janus, "require_tools", lambda: {"janus": "janus", "ip": "ip", "unshare": "unshare"})
    assert main(["bench", "sfu", "--peer", "janus", "--fan-outs", "1,0"]) == 1
    assert "--fan-outs must be" in capsys.readouterr().err
    assert main(["bench", "sfu", "--peer", "janus", "--fan-outs", "x"]) == 1
    assert "error" in capsys.readouterr().err


def test_the_generated_configuration_loads_only_videoroom_and_http(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libraries = tmp_path / "lib"
    for kind, names in (
        ("plugins", ["libjanus_videoroom.so", "libjanus_echotest.so"]),
        ("transports", ["libjanus_http.so", "libjanus_websockets.so"]),
    ):
        (libraries / kind).mkdir(parents=True)
        for name in names:
            (libraries / kind / name).write_bytes(b"")
    monkeypatch.setattr(janus, "_plugin_dir", lambda kind: libraries / kind)
    main_file = janus.janus_config(tmp_path / "janus", address="10.77.0.1", port=8088)
    root = tmp_path / "janus"
    assert sorted(p.name for p in (root / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (root / "transports").iterdir()) == ["libjanus_http.so"]
    assert list((root / "events").iterdir()) == [] and list((root / "loggers").iterdir()) == []
    text = main_file.read_text()
    assert 'ice_enforce_list = "10.77.0.1"' in text
    assert "stun" not in text.lower() and "turn" not in text.lower()
    assert f'configs_folder = "{root / "conf"}"' in text
    http = (root / "conf" / "janus.transport.http.jcfg").read_text()
    assert 'ip = "10.77.0.1"' in http and "port = 8088" in http
    assert "admin_http = false" in http and "https = false" in http
