"""``salon bench sfu --spread``: how the two runs' reports are compared."""

from __future__ import annotations

from typing import Any

from salon.bench.sfu import _compare_spread


def report(
    cpu_us: float, per_process: dict[str, float], halves: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "worker_cpu_us_per_forwarded_packet": cpu_us,
        "cpu_us_per_forwarded_packet": cpu_us + 0.5,
        "worker_cpu": {"utilisation_per_process": per_process},
    }
    if halves is not None:
        out["delay_ms_by_half"] = halves
    return out


def test_shares_cpu_ratio_and_the_delay_the_pipe_adds() -> None:
    one = report(20.0, {"1": 0.4})
    two = report(
        22.0,
        {"2": 0.3, "3": 0.1},
        {"first_half": {"p50": 1.0, "p99": 2.5}, "second_half": {"p50": 1.4, "p99": 3.0}},
    )
    compared = _compare_spread(one, two)
    assert compared["worker_cpu_shares"] == [0.75, 0.25]
    assert compared["worker_cpu_us_per_forwarded_packet_ratio"] == 1.1
    assert compared["cpu_us_per_forwarded_packet_ratio"] == round(22.5 / 20.5, 3)
    assert compared["pipe_added_delay_ms"] == {"p50": 0.4, "p99": 0.5}


def test_missing_figures_are_none() -> None:
    compared = _compare_spread(report(0.0, {}), report(0.0, {}))
    assert compared["worker_cpu_shares"] == []
    assert compared["worker_cpu_us_per_forwarded_packet_ratio"] is None
    assert compared["pipe_added_delay_ms"] == {"p50": None, "p99": None}
