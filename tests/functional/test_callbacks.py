"""Session-monitoring callbacks, posted to a real HTTP receiver on loopback as OpenTok posts them.

The receiver records every request; it can answer 500 for a while, never answer, or not be
there at all while salon restarts. Delivery must be at least once, in order within a session,
and never slow signalling down.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import itertools
import json
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import jwt
import opentok
import pytest

from salon.callbacks import CallbackConfig
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET
from tests.wsclient import WsClient

FAST = CallbackConfig(timeout=2.0, backoff_base=0.2, backoff_cap=0.5, max_attempts=40)


class Receiver:
    """A threaded HTTP server recording each POST; ``answer(n)`` gives the status of the n-th."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.answer: Callable[[int], int | None] = lambda n: 200  # None: never answer
        self.released = threading.Event()
        self._numbered = itertools.count()  # each POST its own n, whichever thread takes it
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.answer(next(receiver._numbered))
                receiver.requests.append((dict(self.headers), body, status or 0))
                if status is None:
                    receiver.released.wait(30)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callbacks?key=k3y"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies answered 2xx, in arrival order."""
        return [json.loads(body) for _, body, status in self.requests if 200 <= status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def serve(data_dir: pathlib.Path, callback_url: str, callbacks: CallbackConfig = FAST) -> ServerThread:
    return ServerThread(
        ServerConfig(
            port=0,
            data_dir=data_dir,
            api_key=API_KEY,
            api_secret=API_SECRET,
            signalling=SignallingConfig(heartbeat_interval=0.5, heartbeat_timeout=2.0, reconnect_grace=0),
            media=False,
            callback_url=callback_url,
            callbacks=callbacks,
        )
    )


async def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def sdk(url: str) -> opentok.Client:
    return opentok.Client(API_KEY, API_SECRET, api_url=url)


def new_session(url: str) -> str:
    return str(sdk(url).create_session(media_mode=opentok.MediaModes.routed).session_id)


def token(url: str, session_id: str, role: str, data: str) -> str:
    return str(sdk(url).generate_token(session_id, role=opentok.Roles(role), data=data))


def summary(body: dict[str, Any]) -> tuple[str, ...]:
    """(event, reason, connection or stream ID) of a callback body."""
    subject = body.get("stream") or body.get("connection") or {}
    return (body["event"], body.get("reason", ""), subject.get("id", ""))


async def test_every_session_monitoring_event_has_opentok_shape_in_order(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    with serve(tmp_path, receiver.url) as thread:
        url = thread.url
        sid = new_session(url)
        a = await WsClient.join(url, sid, token(url, sid, "moderator", "name=a"))
        b = await WsClient.join(url, sid, token(url, sid, "publisher", "name=b"))
        s1 = (await b.request({"type": "publish", "name": "cam", "video_type": "camera"}))["stream"]
        await a.request({"type": "force_unpublish", "stream_id": s1["stream_id"]})
        s2 = (await b.request({"type": "publish", "name": "screen", "video_type": "screen"}))["stream"]
        await b.request({"type": "unpublish", "stream_id": s2["stream_id"]})
        s3 = (await b.request({"type": "publish", "name": "cam3"}))["stream"]
        await a.request({"type": "force_disconnect", "connection_id": b.connection_id})
        c = await WsClient.join(url, sid, token(url, sid, "publisher", "name=c"), answer_pings=False)
        await wait_for(
            "c timed out", lambda: any(m.get("reason") == "networkDisconnected" for m in a.messages)
        )
        await a.close()
        await c.close()
        expected = [
            ("sessionCreated", "", ""),
            ("connectionCreated", "", a.connection_id),
            ("connectionCreated", "", b.connection_id),
            ("streamCreated", "", s1["stream_id"]),
            ("streamDestroyed", "forceUnpublished", s1["stream_id"]),
            ("streamCreated", "", s2["stream_id"]),
            ("streamDestroyed", "clientDisconnected", s2["stream_id"]),
            ("streamCreated", "", s3["stream_id"]),
            ("streamDestroyed", "forceDisconnected", s3["stream_id"]),
            ("connectionDestroyed", "forceDisconnected", b.connection_id),
            ("connectionCreated", "", c.connection_id),
            ("connectionDestroyed", "networkDisconnected", c.connection_id),
            ("connectionDestroyed", "clientDisconnected", a.connection_id),
            ("sessionDestroyed", "", ""),
        ]
        await wait_for("every callback", lambda: len(receiver.delivered()) >= len(expected))
        bodies = receiver.delivered()
        assert [summary(body) for body in bodies] == expected
        for body in bodies:
            assert body["sessionId"] == sid and body["projectId"] == API_KEY
            assert isinstance(body["timestamp"], int) and body["timestamp"] > 1_600_000_000_000
        b_connection = {
            "id": b.connection_id,
            "createdAt": b.connected["connection"]["created_at"],
            "data": "name=b",
        }
        assert bodies[2]["connection"] == b_connection
        assert set(bodies[2]) == {"sessionId", "projectId", "event", "timestamp", "connection"}
        assert bodies[3]["stream"] == {
            "id": s1["stream_id"],
            "connection": b_connection,
            "createdAt": s1["created_at"],
            "name": "cam",
            "videoType": "camera",
        }
        assert bodies[5]["stream"]["videoType"] == "screen"
        assert bodies[9] == {
            "sessionId": sid,
            "projectId": API_KEY,
            "event": "connectionDestroyed",
            "timestamp": bodies[9]["timestamp"],
            "reason": "forceDisconnected",
            "connection": b_connection,
        }
        assert set(bodies[0]) == {"sessionId", "projectId", "event", "timestamp"}
        headers = receiver.requests[0][0]
        assert headers["Content-Type"] == "application/json" and "Authorization" not in headers


async def test_a_receiver_failing_for_a_while_gets_everything_in_order(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    receiver.answer = lambda n: 500 if n < 6 else 200
    with serve(tmp_path, receiver.url) as thread:
        url = thread.url
        sid = new_session(url)
        clients = [await WsClient.join(url, sid, token(url, sid, "publisher", f"n={i}")) for i in range(3)]
        for client in clients:
            await client.close()
        await wait_for(
            "sessionDestroyed", lambda: any(b["event"] == "sessionDestroyed" for b in receiver.delivered())
        )
        events = [summary(b)[0] for b in receiver.delivered()]
        assert events == ["sessionCreated"] + ["connectionCreated"] * 3 + ["connectionDestroyed"] * 3 + [
            "sessionDestroyed"
        ]
        assert [b["connection"]["data"] for b in receiver.delivered()[1:4]] == ["n=0", "n=1", "n=2"]
        assert sum(1 for *_, status in receiver.requests if status == 500) == 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_callbacks_pending_when_salon_stops_are_delivered_after_it_restarts(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()  # nothing listens there yet: the receiver is down
    url_of_receiver = f"http://127.0.0.1:{port}/cb"
    patient = replace(FAST, max_attempts=1000)
    with serve(tmp_path, url_of_receiver, patient) as thread:
        sid = new_session(thread.url)
        a = await WsClient.join(thread.url, sid, token(thread.url, sid, "publisher", "who=a"))
        b = await WsClient.join(thread.url, sid, token(thread.url, sid, "publisher", "who=b"))
        stream_id = (await b.request({"type": "publish", "name": "cam"}))["stream"]["stream_id"]
        await a.close()
        await b.close()
        await wait_for_store(thread, lambda counts: counts["pending"] == 8 and counts["delivered"] == 0)
    receiver = Receiver(port)
    try:
        with serve(tmp_path, url_of_receiver, patient):
            await wait_for("the stored callbacks", lambda: len(receiver.delivered()) >= 8)
        assert [summary(b) for b in receiver.delivered()] == [
            ("sessionCreated", "", ""),
            ("connectionCreated", "", a.connection_id),
            ("connectionCreated", "", b.connection_id),
            ("streamCreated", "", stream_id),
            ("connectionDestroyed", "clientDisconnected", a.connection_id),
            ("streamDestroyed", "clientDisconnected", stream_id),
            ("connectionDestroyed", "clientDisconnected", b.connection_id),
            ("sessionDestroyed", "", ""),
        ]
    finally:
        receiver.close()


def state(thread: ServerThread) -> Any:
    return thread.server.config.app.state


async def wait_for_store(thread: ServerThread, predicate: Callable[[dict[str, int]], bool]) -> None:
    store = state(thread).store
    deadline = time.monotonic() + 30
    while True:
        counts = await asyncio.wrap_future(thread.run_coroutine(store.callback_counts()))
        if predicate(counts):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting on the outbox: {counts}")
        await asyncio.sleep(0.1)


async def test_signed_callbacks_verify_with_the_signature_secret(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    secret = "a-signature-secret-of-the-application"
    with serve(tmp_path, receiver.url) as thread:
        await asyncio.wrap_future(
            thread.run_coroutine(state(thread).store.update_project(API_KEY, signature_secret=secret))
        )
        sid = new_session(thread.url)
        a = await WsClient.join(thread.url, sid, token(thread.url, sid, "publisher", ""))
        await a.close()
        await wait_for("three callbacks", lambda: len(receiver.delivered()) >= 3)
    for headers, body, _ in receiver.requests:
        scheme, _, signature = headers["Authorization"].partition(" ")
        assert scheme == "Bearer"
        claims = jwt.decode(signature, secret, algorithms=["HS256"])
        assert claims["payload_hash"] == hashlib.sha256(body).hexdigest()
        assert isinstance(claims["iat"], int) and abs(claims["iat"] - time.time()) < 120 and claims["jti"]
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(signature, "another secret of the same length.", algorithms=["HS256"])


async def test_a_receiver_that_never_answers_does_not_slow_signals(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    receiver.answer = lambda n: None
    with serve(tmp_path, receiver.url, replace(FAST, timeout=30.0)) as thread:
        url = thread.url
        sid = new_session(url)
        clients = [await WsClient.join(url, sid, token(url, sid, "publisher", "")) for _ in range(3)]
        await wait_for("a hung callback request", lambda: len(receiver.requests) >= 1)
        for i in range(100):
            await clients[0].send(
                {"type": "signal", "request_id": 1000 + i, "signal_type": "t", "data": str(i)}
            )
        for client in clients[1:]:
            await wait_for(
                "100 signals",
                lambda client=client: sum(1 for m in client.messages if m["type"] == "signal") == 100,  # type: ignore[misc]
                timeout=10,
            )
        assert all(status == 0 for *_, status in receiver.requests)  # still hanging, none answered
        for client in clients:
            await client.close()


def test_the_cli_sets_callback_urls_and_reports_given_up_callbacks(tmp_path: pathlib.Path) -> None:
    def salon(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "salon", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    project = salon("project", "create", "--name", "cb")
    settings = salon(
        "project",
        "update",
        project["api_key"],
        "--callback-url",
        "http://127.0.0.1:9/cb",
        "--signature-secret",
        "s" * 32,
    )
    assert settings == {
        "api_key": project["api_key"],
        "name": "cb",
        "callback_url": "http://127.0.0.1:9/cb",
        "archive_callback_url": None,
        "signed": True,
    }
    assert "sssss" not in json.dumps(settings)
    status = salon("callbacks", "status")
    assert status == {"pending": 0, "delivered": 0, "given_up": 0, "given_up_callbacks": []}
    bad = subprocess.run(
        [sys.executable, "-m", "salon", "project", "update", project["api_key"], "--callback-url", "ftp://x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "http:// or https://" in bad.stderr


async def test_a_callback_is_given_up_after_its_attempts_and_reported(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    receiver.answer = lambda n: 503
    with serve(tmp_path, receiver.url, replace(FAST, max_attempts=3)) as thread:
        sid = new_session(thread.url)
        a = await WsClient.join(thread.url, sid, token(thread.url, sid, "publisher", ""))
        await wait_for_store(thread, lambda counts: counts["given_up"] >= 2)
        await a.close()
    assert len(receiver.requests) >= 6
    command = [sys.executable, "-m", "salon", "callbacks", "status", "--data-dir", str(tmp_path)]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    status = json.loads(done.stdout)
    assert status["given_up"] >= 2
    first = status["given_up_callbacks"][-1]
    assert first["event"] == "sessionCreated" and first["attempts"] == 3 and first["error"] == "HTTP 503"
    assert "k3y" not in done.stdout + done.stderr


async def test_many_sessions_with_failures_get_every_callback_in_session_order(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    # Every third request fails; answers are slow; fewer requests at once than sessions; events
    # keep coming while earlier ones are in flight or retried: each session's callbacks still
    # arrive whole and in order.
    def answer(n: int) -> int:
        time.sleep(0.02)
        return 500 if n % 3 == 2 else 200

    receiver.answer = answer
    config = replace(FAST, concurrency=3, backoff_base=0.05, backoff_cap=0.1)
    with serve(tmp_path, receiver.url, config) as thread:
        url = thread.url
        sessions = [new_session(url) for _ in range(4)]
        expected: dict[str, list[tuple[str, str, str]]] = {
            sid: [("sessionCreated", "", "")] for sid in sessions
        }
        anchors = []
        for sid in sessions:
            anchor = await WsClient.join(url, sid, token(url, sid, "publisher", "anchor"))
            anchors.append(anchor)
            expected[sid].append(("connectionCreated", "", anchor.connection_id))
        for round_ in range(5):
            for sid in sessions:
                client = await WsClient.join(url, sid, token(url, sid, "publisher", f"r={round_}"))
                await client.close()
                expected[sid] += [
                    ("connectionCreated", "", client.connection_id),
                    ("connectionDestroyed", "clientDisconnected", client.connection_id),
                ]
        for sid, anchor in zip(sessions, anchors, strict=True):
            await anchor.close()
            expected[sid] += [
                ("connectionDestroyed", "clientDisconnected", anchor.connection_id),
                ("sessionDestroyed", "", ""),
            ]
        total = sum(len(events) for events in expected.values())
        await wait_for(f"{total} callbacks", lambda: len(receiver.delivered()) >= total)
        await wait_for_store(
            thread, lambda counts: counts == {"pending": 0, "delivered": total, "given_up": 0}
        )
    got: dict[str, list[tuple[str, str, str]]] = {sid: [] for sid in sessions}
    for body in receiver.delivered():
        got[body["sessionId"]].append(summary(body))
    assert got == expected
    assert sum(1 for *_, status in receiver.requests if status == 500) >= total // 3
