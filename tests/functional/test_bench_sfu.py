"""``salon bench sfu`` end to end: a real server process, synthetic publishers and sinks.

A smoke test only: it checks the report's shape, that packets were forwarded and that little
was lost; no timing figure is asserted (the machine may be busy).
"""

from __future__ import annotations

import json

import pytest

from salon.cli import main

pytestmark = pytest.mark.timeout(180)


def test_bench_sfu_forwards_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "sfu", "--publishers", "1", "--subscribers", "2", "--duration", "2"])
    report = json.loads(capsys.readouterr().out)
    for key in (
        "packets_in_per_second",
        "forwarded_per_second",
        "cpu_us_per_forwarded_packet",
        "loss",
        "delay_ms",
        "memory",
        "parameters",
        "machine",
        "server_cpu",
    ):
        assert key in report, key
    assert report["parameters"]["consumers"] == 2
    packets_in, forwarded = report["packets_in_per_second"], report["forwarded_per_second"]
    assert packets_in > 0
    # Two subscribers: every packet in goes out twice, less what was lost (at most 2 %).
    assert 1.9 * packets_in <= forwarded <= 2.0 * packets_in + 1, (packets_in, forwarded)
    assert report["cpu_us_per_forwarded_packet"] > 0
    assert report["server_cpu"]["processes"] >= 1
    # The scheduler's accounting: the worker ran and slept between bursts while forwarding,
    # and (connected, idle) still woke for its timers at a rate far below the packet rate.
    scheduler = report["worker_scheduler"]
    assert scheduler["run_us_per_forwarded_packet"] > 0, scheduler
    assert 0 < scheduler["wakeups_per_forwarded_packet"] <= 2, scheduler
    assert scheduler["preemptions_per_forwarded_packet"] >= 0, scheduler
    assert report["server_cpu"]["idle_run_ms_per_second_workers"] > 0, report["server_cpu"]
    assert 0 < report["server_cpu"]["idle_wakeups_per_second_workers"] < 100, report["server_cpu"]
    delay = report["delay_ms"]
    assert delay["samples"] > 0 and 0 < delay["p50"] <= delay["p99"] <= delay["max"], delay
    assert report["memory"]["rss_per_consumer_kb"] > 0, report["memory"]
    assert report["loss"]["expected"] > 0
    assert 0 <= report["loss"]["packets"] <= 0.02 * report["loss"]["expected"], report["loss"]
    assert report["loss"]["sinks_started_in_window"] == 0, report["loss"]
    # A broken run prints no report (the json.loads above fails); 1 only means some loss.
    assert code == (0 if report["loss"]["packets"] == 0 else 1), (code, report["loss"])
