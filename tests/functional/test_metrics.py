"""Prometheus metrics of a real ``salon serve`` (issue 14, "Observability for a cluster").

A call (Python SDK publisher and subscriber, real media through the SFU) is followed on the
metrics address: connections, streams, consumers and forwarded packets move as the call does
(:func:`tests.metrics.check_call_moves_metrics`, which takes the publisher's and the
subscriber's nodes and so runs unchanged against two nodes of a cluster). ``GET /metrics`` on
the main port wants the metrics token; the JSON log of the call names its session and
connections, and never the token.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from salon.observability import metrics
from salon.tokens import generate_token
from tests.conftest import API_KEY, API_SECRET
from tests.metrics import Node, check_call_moves_metrics, parse
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.timeout(240)

METRICS_TOKEN = "metrics-token-5b7c1e0f9a2d4c68"


async def test_metrics_follow_a_call_and_main_port_metrics_want_the_token(tmp_path: pathlib.Path) -> None:
    args = ["--workers", "1", "--metrics-address", "127.0.0.1:0", "--node-name", "node-a"]
    args += ["--metrics-token", METRICS_TOKEN, "--log-format", "json"]
    with ServeProcess(tmp_path, API_KEY, API_SECRET, args) as server:
        assert server.metrics_url.startswith("http://127.0.0.1:"), server.output[-2000:]
        assert not server.metrics_url.endswith(server.url.rsplit(":", 1)[1] + "/metrics")
        node = Node(server.url, server.metrics_url, "node-a")
        created = httpx.post(
            server.url + "/demo/join", json={"room": "metrics", "name": "x"}, timeout=15
        ).json()
        session_id = created["sessionId"]

        def token() -> str:
            return generate_token(API_KEY, API_SECRET, session_id)

        await check_call_moves_metrics(node, node, session_id, token)

        # The main port: 401 (JSON message) without the token or with a wrong one, 200 with it.
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0000000000"},
            {"Authorization": METRICS_TOKEN},
        ):
            refused = httpx.get(server.url + "/metrics", headers=headers, timeout=15)
            assert refused.status_code == 401, (headers, refused.status_code)
            assert refused.json()["message"] and refused.headers["www-authenticate"] == "Bearer"
        scrape = Node(server.url, server.url + "/metrics", "node-a", METRICS_TOKEN).scrape()  # 200
        assert scrape.value("salon_media_packets_forwarded_total", node="node-a") > 100
        assert scrape.has("salon_worker_up", node="node-a", worker="worker-0")
        assert scrape.has(
            "salon_pipe_packets_total", node="node-a", direction="in"
        )  # one worker: no pipe, zero
    # Every line the server logged is JSON with the node name; the call's lines name its
    # session and connections; the metrics token is nowhere.
    log = server.stderr_path.read_text(encoding="utf-8")
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert entries and all(e["node"] == "node-a" and e["message"] is not None for e in entries)
    assert any(e["process"].startswith("salon-worker-0") for e in entries), "no media worker line"
    joined = [e for e in entries if "joined as" in e["message"] and e.get("session_id") == session_id]
    assert len(joined) == 2 and all(e["connection_id"] in e["message"] for e in joined), joined
    assert METRICS_TOKEN not in server.output


@pytest.mark.parametrize("address", ["", "off"])
def test_metrics_address_off(tmp_path: pathlib.Path, address: str) -> None:
    with ServeProcess(tmp_path, API_KEY, API_SECRET, ["--no-media", "--metrics-address", address]) as server:
        assert server.metrics_url == ""
        assert "salon metrics on" not in server.output
        assert httpx.get(server.url + "/metrics", timeout=15).status_code == 404  # no token: no route


def test_a_taken_metrics_address(tmp_path: pathlib.Path) -> None:
    """Chosen: the start stops with one clear line. The default: the server starts without it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
        command = [sys.executable, "-m", "salon", "serve", "--port", "0", "--data-dir", str(tmp_path)]
        refused = subprocess.run(
            [*command, "--no-media", "--metrics-address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert f"salon: error: cannot serve metrics on 127.0.0.1:{port}: " in refused.stderr
        assert "Traceback" not in refused.stderr
    assert metrics.DEFAULT_METRICS_ADDRESS == "127.0.0.1:9464"
    with socket.create_server(("127.0.0.1", 9464)) if _free(9464) else contextlib.nullcontext():
        # The default address is taken now (by this test, or by another server).
        server = ServeProcess(tmp_path, API_KEY, API_SECRET, ["--no-media"])
        server.command.remove("127.0.0.1:0")
        server.command.remove("--metrics-address")
        with server:
            assert httpx.get(server.url + "/health", timeout=15).status_code == 200
        assert "metrics not served" in server.output and server.metrics_url == ""


def _free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"salon.media.worker" in command:
            pids.append(int(entry.name))
    return pids


def test_a_stopped_worker_is_reported_down_without_holding_up_the_scrape(tmp_path: pathlib.Path) -> None:
    args = ["--workers", "1", "--node-name", "node-b"]
    with ServeProcess(tmp_path, API_KEY, API_SECRET, args) as server:
        node = Node(server.url, server.metrics_url, "node-b")
        assert node.scrape().value("salon_worker_up", node="node-b", worker="worker-0") == 1
        (pid,) = _worker_pids(server.pid)
        os.kill(pid, signal.SIGSTOP)  # hung: it cannot answer (the pool kills it only after 20 s)
        try:
            started = time.monotonic()
            response = httpx.get(server.metrics_url, timeout=15)
            took = time.monotonic() - started
            assert response.status_code == 200
            scrape = parse(response.text)
            assert scrape.value("salon_worker_up", node="node-b", worker="worker-0") == 0
            assert scrape.value("salon_scrape_complete", node="node-b") == 0
            assert scrape.has("salon_sessions", node="node-b")  # the rest is there
            assert took < metrics.WORKER_TIMEOUT + 3, f"the scrape took {took:.1f} s"
        finally:
            os.kill(pid, signal.SIGCONT)
        node_up = node.scrape()  # answered again
        assert node_up.value("salon_worker_up", node="node-b", worker="worker-0") == 1
