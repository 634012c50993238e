"""``salon bench signalling`` end to end, small: a correctness check of the command, not a timing."""

from __future__ import annotations

import json

import pytest

from salon.cli import main


@pytest.mark.timeout(120)
def test_bench_signalling_delivers_every_signal(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "signalling", "--connections", "20", "--signals", "3", "--interval", "0.05"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["connections"] == 20
    assert report["signals"] == 3
    assert report["lost"] == 0
    assert report["disconnected"] == 0
    assert report["delivered"] == 20 * 3
    for key in ("p50", "p99", "max"):
        assert report["signal_fanout_ms"][key] is not None
    for key in ("p50", "p99"):
        assert report["per_receiver_ms"][key] is not None
    assert report["signal_fanout_ms"]["complete_signals"] == 3
    for key in (
        "server_rss_kb_per_connection",
        "server_cpu_us_per_delivered_message",
        "python",
    ):
        assert key in report
    assert {"cpus", "model"} <= report["machine"].keys()
