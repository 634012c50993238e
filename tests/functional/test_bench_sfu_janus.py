"""``salon bench sfu --peer janus`` end to end: salon and Janus on the same load, in a namespace.

A smoke test only (one short run of each at fan-out 1, about 30 s): the report's shape, both
servers forwarded, nothing was lost, and nothing of the namespace leaked into this one. It
needs root and the Debian ``janus`` package, which the benchmark never installs
(``apt-get install --no-install-recommends janus``); without them it is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from salon.cli import main

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("janus") is None or os.geteuid() != 0,
        reason="needs root and `apt-get install --no-install-recommends janus`",
    ),
]


def _host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10, check=True).stdout


def test_side_by_side_with_janus(capfd: pytest.CaptureFixture[str]) -> None:
    assert "salonb0" not in _host_links()
    code = main(["bench", "sfu", "--peer", "janus", "--fan-outs", "1", "--runs", "1", "--duration", "2"])
    captured = capfd.readouterr()
    report = json.loads(captured.out)
    assert report["benchmark"] == "sfu-side-by-side"
    assert report["errors"] == [], report["errors"]
    assert report["machine"]["janus"], report["machine"]
    runs = {r["server"]: r for r in report["runs"]}
    assert set(runs) == {"salon", "janus"}, report["runs"]
    for server, run in runs.items():
        assert run["fan_out"] == 1
        assert run["packets_in_per_second"] > 0, (server, run)
        # One subscriber: every packet in goes out once, less what was lost (at most 2 %).
        assert run["forwarded_per_second"] >= 0.98 * run["packets_in_per_second"], (server, run)
        assert run["worker_cpu_us_per_forwarded_packet"] > 0, (server, run)
        assert run["loss"]["expected"] > 0 and run["loss"]["packets"] <= 0.02 * run["loss"]["expected"], run
        assert len(run["loadavg_before"]) == 3 and len(run["loadavg_after"]) == 3
    (row,) = report["summary"]
    assert row["fan_out"] == 1 and row["ratio_salon_to_janus"] > 0, row
    lost = sum(r["loss"]["packets"] for r in report["runs"])
    assert code == (0 if lost == 0 else 1), (code, lost)
    # The veth pair lived in the benchmark's own namespace, gone with it.
    assert "salonb0" not in _host_links()
