"""``salon bench quality --forwarding`` end to end: a real server process, a synthetic simulcast
publisher and a single-layer one, 16 counting subscribers.

A smoke test: the report's shape, that the subscribers on the simulcast stream got the layers
their preferences ask for (6 on q, 5 on h, 5 on f: packet rates 1 : 2 : 4) and every
subscriber of the single-layer stream all of it, and that worker CPU was measured. No CPU
figure is asserted (the machine may be busy).
"""

from __future__ import annotations

import json

import pytest

from salon.cli import main

pytestmark = pytest.mark.timeout(240)


def test_bench_quality_forwarding_reports_both_windows(capsys: pytest.CaptureFixture[str]) -> None:
    main(["bench", "quality", "--forwarding", "--warm-up", "4", "--duration", "4"])
    report = json.loads(capsys.readouterr().out)
    assert report["subscribers"] == 16
    three, one = report["three_layers_in"], report["one_layer_in"]
    rates = three["packets_per_second_by_subscriber"]
    q, h, f = rates[:6], rates[6:11], rates[11:]
    # 30 frames/s of 1, 2 and 4 packets: each group on its layer (loose: a loaded host).
    assert all(15 <= r <= 40 for r in q), rates
    assert all(40 <= r <= 75 for r in h), rates
    assert all(90 <= r <= 140 for r in f), rates
    assert all(90 <= r <= 140 for r in one["packets_per_second_by_subscriber"]), one
    assert three["packets_in_per_second"] > one["packets_in_per_second"] > 0
    for window in (three, one):
        assert window["worker_cpu_us_per_forwarded_packet"] > 0, window
    assert report["ratio_three_to_one"] > 0
    assert report["machine"]["cpus"] >= 1
