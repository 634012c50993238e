"""``salon bench soak`` and the ``/debug/processes`` endpoint it reads.

The command test is a short run (a few cycles) that checks the report's shape and that each
cycle released what it opened; no slope is asserted (a few cycles cannot show one).
"""

from __future__ import annotations

import json
import os
import pathlib

import httpx
import pytest

from salon.cli import main
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.functional.test_rest_api import auth_header

pytestmark = pytest.mark.timeout(180)


def test_debug_processes_is_off_by_default(server: RunningServer) -> None:
    r = httpx.get(f"{server.url}/debug/processes", headers=auth_header(), trust_env=False)
    assert r.status_code == 404


def test_debug_processes_reports_main_and_worker(tmp_path: pathlib.Path) -> None:
    config = ServerConfig(
        port=0, data_dir=tmp_path, api_key=API_KEY, api_secret=API_SECRET, workers=1, debug_endpoints=True
    )
    with ServerThread(config) as thread, httpx.Client(base_url=thread.url, trust_env=False) as http:
        r = http.get("/debug/processes")
        assert r.status_code == 403 and r.json()["message"]
        r = http.get("/debug/processes", headers=auth_header(secret="0" * 40))
        assert r.status_code == 403 and r.json()["message"]

        r = http.get("/debug/processes", headers=auth_header())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["main"]["pid"] == os.getpid()  # ServerThread serves from this process
        assert body["main"]["tasks"] >= 1 and body["main"]["fds"] > 0 and body["main"]["rss"] > 0
        (worker,) = body["workers"]
        assert worker["pid"] != os.getpid() and worker["tasks"] >= 1
        assert worker["transports"] == 0 and worker["udp_sockets"] == 0
        assert worker["tracemalloc"] == []

        # Asking for allocation growth without SALON_TRACEMALLOC is a clear error.
        r = http.get("/debug/processes", params={"tracemalloc": 5}, headers=auth_header())
        assert r.status_code == 400 and "SALON_TRACEMALLOC" in r.json()["message"]
        r = http.get("/debug/processes", params={"tracemalloc": -1}, headers=auth_header())
        assert r.status_code == 400 and r.json()["message"]


def test_bench_soak_cycles_real_media_and_reports_every_process(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "soak", "--cycles", "6", "--progress", "3", "--samples"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0, captured.err
    assert report["parameters"]["cycles"] == 6
    assert {"cpus", "model", "kernel"} <= report["machine"].keys()
    roles = sorted(p["role"] for p in report["processes"])
    assert roles == ["main", "worker"], report["processes"]
    for process in report["processes"]:
        assert process["alive_at_end"]
        assert process["cycles_seen"] == [0, 6]
        assert process["rss_slope_bytes_per_cycle"] is not None
        assert process["tasks"]["end"] is not None
        # Each cycle released its sockets and descriptors (sampled once no transport is left).
        assert process["udp_sockets"]["end"] == process["udp_sockets"]["start"] == 0
        samples = report["samples"][str(process["pid"])]
        assert [s["cycle"] for s in samples] == list(range(7))
        # Descriptors: the first cycle may open some for good (the SQLite WAL's shared-memory
        # file, a pooled connection), and a sample may catch the last WebSocket still closing;
        # a descriptor kept per cycle would add 5 over cycles 1-6.
        fds = [s["fds"] for s in samples[1:]]
        assert fds[0] <= process["fds"]["start"] + 2 and max(fds) - fds[0] <= 2, (process, fds)
    assert "RSS slope" in captured.err and "machine:" in captured.err
