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
    assert report["packets_in_per_second"] > 0
    assert report["forwarded_per_second"] > 0
    assert report["cpu_us_per_forwarded_packet"] > 0
    assert report["server_cpu"]["processes"] >= 1
    assert {"p50", "p99"} <= set(report["delay_ms"])
    assert report["memory"]["rss_per_consumer_kb"] is not None
    assert report["loss"]["expected"] > 0
    assert report["loss"]["packets"] <= 0.02 * report["loss"]["expected"], report["loss"]
    assert code in (0, 1)
