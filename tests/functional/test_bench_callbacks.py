"""``salon bench callbacks`` end to end, small: the report's shape and that every callback arrived.

No delay or throughput figure is asserted (the machine may be busy).
"""

from __future__ import annotations

import json

import pytest

from salon.cli import main

pytestmark = pytest.mark.timeout(180)


def test_bench_callbacks_measures_delay_and_drains_the_outbox(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "callbacks",
            "--rate",
            "40",
            "--duration",
            "2",
            "--sessions",
            "2",
            "--hold",
            "0.2",
            "--prefill",
            "200",
            "--prefill-sessions",
            "5",
        ]
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0, captured.err
    assert {"cpus", "model"} <= report["machine"].keys()
    delay = report["delay"]
    assert delay["joins"] == 40 and delay["join_failures"] == 0
    assert delay["undelivered"] == 0
    # Every join and leave made one callback each, and the measured window holds them all.
    assert delay["callbacks_measured"] == 2 * 40
    assert delay["events"]["connectionCreated"] == 40 + 2
    assert delay["events"]["connectionDestroyed"] == 40 + 2
    assert delay["events"]["sessionCreated"] == delay["events"]["sessionDestroyed"] == 2
    for key in ("p50", "p99", "max"):
        assert delay["delay_ms"][key] is not None and delay["delay_ms"][key] >= 0
    throughput = report["throughput"]
    assert throughput["delivered"] == 200 and throughput["undelivered"] == 0 and throughput["duplicates"] == 0
    assert throughput["in_order_within_session"] is True
    assert throughput["callbacks_per_second"] > 0
