"""``salon bench stamping`` runs end to end on a tiny load and reports what the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys

TINY = ["--packets", "300", "--rounds", "1", "--fan-out", "2"]


def test_stamping_bench_reports_the_added_cost_per_packet() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "salon", "bench", "stamping", *TINY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "machine:" in result.stderr
    report = json.loads(result.stdout)
    assert set(report["us_per_copy"]) == {"plain", "stamping", "uplink", "both", "receive", "feedback"}
    assert all(v > 0 for v in report["us_per_copy"].values()), report
    assert isinstance(report["stamping_us_per_copy"], float)
    assert isinstance(report["uplink_us_per_received_packet"], float)
    assert isinstance(report["feedback_us_per_received_packet"], float)
    assert report["all_rounds_s"]["feedback"] and report["all_rounds_s"]["receive"]
    assert report["machine"]["cpus"] >= 1


def test_stamping_bench_refuses_nonsense_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "salon", "bench", "stamping", "--packets", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--packets >= 100" in result.stderr
