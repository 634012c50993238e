"""``salon serve --node-url`` and ``--placement-margin`` (placement by load in a cluster)."""

from __future__ import annotations

import pathlib

import pytest

from salon.cli.main import main


def test_serve_takes_the_placement_options(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import salon.server.run
    from salon.server.config import DEFAULT_PLACEMENT_MARGIN, ServerConfig

    started: list[ServerConfig] = []
    monkeypatch.setattr(salon.server.run, "run_server", lambda config, **kwargs: started.append(config))
    base = ["serve", "--port", "0", "--data-dir", str(tmp_path), "--no-media"]
    assert main(base) == 0
    defaults = started.pop()
    assert (defaults.node_url, defaults.placement_margin) == (None, DEFAULT_PLACEMENT_MARGIN)
    assert main([*base, "--node-url", "https://node-b.example.com/", "--placement-margin", "0"]) == 0
    chosen = started.pop()
    assert (chosen.node_url, chosen.placement_margin) == ("https://node-b.example.com", 0)
    capsys.readouterr()
    for bad, message in [
        (["--placement-margin", "-1"], "--placement-margin"),
        (["--node-url", "node-b.example.com"], "--node-url"),
        (["--node-url", "ws://node-b"], "--node-url"),
    ]:
        assert main([*base, *bad]) == 1
        assert message in capsys.readouterr().err
    assert started == []
