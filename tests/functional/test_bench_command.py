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
    fanout, per_receiver = report["signal_fanout_ms"], report["per_receiver_ms"]
    assert 0 < fanout["p50"] <= fanout["p99"] <= fanout["max"], fanout
    assert 0 < per_receiver["p50"] <= per_receiver["p99"] <= per_receiver["max"], per_receiver
    # A signal reaches its last receiver no sooner than the median receiver gets one.
    assert fanout["max"] >= per_receiver["p50"], (fanout, per_receiver)
    assert report["signal_fanout_ms"]["complete_signals"] == 3
    assert report["server_rss_kb_per_connection"] > 0, report["server_memory_kb"]
    # 60 messages may fit in one CPU clock tick: 0 is a measurement, None would not be.
    assert report["server_cpu_us_per_delivered_message"] >= 0
    assert report["python"].split()[0] in {"CPython", "PyPy"}, report["python"]
    assert {"cpus", "model"} <= report["machine"].keys()
