"""Request-body limit, the demo endpoint's rate limit, deeply nested JSON (issue 9, defects 6, 7)."""

from __future__ import annotations

import asyncio
import pathlib
import select
import socket
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.functional.test_rest_api import auth_header
from tests.serveproc import ServeProcess

MiB = 1024 * 1024


def stream_request(
    url: str, path: str, total: int, *, headers: dict[str, str], chunked: bool = True
) -> tuple[int, dict[str, str], bytes, int]:
    """POST a ``total``-byte body in 64 KiB pieces, stopping as soon as the server answers.

    Returns the status, headers and body of the answer, and how many body bytes were sent.
    """
    parsed = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parsed.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sock.setblocking(False)
    piece = b"x" * 65536
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    pending = b""
    sent = 0
    received = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 10)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                if _complete(received):
                    break
                continue
            if writable:
                if not pending:
                    pending = frame
                    sent += len(piece)
                    if sent >= total and chunked:
                        pending += b"0\r\n\r\n"
                try:
                    pending = pending[sock.send(pending) :]
                except BlockingIOError:
                    pass
            elif not readable and sent >= total:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head, f"no answer after sending {sent} bytes"
    status_line, *header_lines = head.decode().split("\r\n")
    answer_headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), answer_headers, body, sent


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def test_a_100_mb_body_gets_413_unread_and_the_server_memory_stays_flat(tmp_path: pathlib.Path) -> None:
    with ServeProcess(tmp_path, API_KEY, API_SECRET, ["--no-media"]) as server:
        # Warm up every path once (imports, first-request allocations) before the reading.
        assert httpx.post(server.url + "/demo/join", json={"room": "r", "name": "n"}).status_code == 200
        assert httpx.post(server.url + "/session/create", headers=auth_header()).status_code == 200
        stream_request(server.url, "/demo/join", 4 * MiB, headers={"Content-Type": "application/json"})
        before = server.rss_kib()
        cases = [
            ("/demo/join", {"Content-Type": "application/json"}, True),  # unauthenticated, chunked
            ("/demo/join", {"Content-Type": "application/json"}, False),  # a declared Content-Length
            ("/session/create", {**auth_header(), "Content-Type": "application/x-www-form-urlencoded"}, True),
            ("/no/such/route", {}, True),
        ]
        for path, headers, chunked in cases:
            status, answer_headers, body, sent = stream_request(
                server.url, path, 100 * MiB, headers=headers, chunked=chunked
            )
            if path == "/no/such/route":
                assert status == 404, body  # never read, so never counted: a plain 404
            else:
                assert status == 413, (path, chunked, body)
                assert answer_headers["content-type"] == "application/json"
                assert b"larger than 1048576 bytes" in body and b'"message"' in body
            assert sent < 50 * MiB, f"{path}: the server read {sent} bytes before answering"
            print(f"{path} ({'chunked' if chunked else 'Content-Length'}): {status} after {sent} bytes sent")
        grown = server.rss_kib() - before
        print(f"server RSS {before} KiB before, grew by {grown} KiB")
        assert grown < 10 * 1024, f"the server grew by {grown} KiB"
        assert httpx.get(server.url + "/health").status_code == 200


def test_the_body_limit_is_exact_and_configurable(tmp_path: pathlib.Path) -> None:
    config = ServerConfig(port=0, data_dir=tmp_path, api_key=API_KEY, api_secret=API_SECRET, media=False)
    config = ServerConfig(**{**{f: getattr(config, f) for f in config.__slots__}, "max_body_size": 4096})
    with ServerThread(config) as server:
        url = server.url + "/session/create"
        headers = {**auth_header(), "Content-Type": "application/x-www-form-urlencoded"}
        just_fits = "media_mode=routed&pad=" + "x" * (4096 - len("media_mode=routed&pad="))
        r = httpx.post(url, content=just_fits, headers=headers)
        assert r.status_code == 200, r.text
        r = httpx.post(url, content=just_fits + "x", headers=headers)
        assert r.status_code == 413
        assert r.json() == {
            "code": "request_too_large",
            "message": "the request body is larger than 4096 bytes",
        }

        def pieces() -> object:
            yield just_fits.encode()
            yield b"x"

        r = httpx.post(url, content=pieces(), headers=headers)  # type: ignore[arg-type]  # chunked
        assert r.status_code == 413 and r.json()["code"] == "request_too_large"


def _demo_config(tmp_path: pathlib.Path, **overrides: object) -> ServerConfig:
    return ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        media=False,
        **overrides,  # type: ignore[arg-type]
    )


async def _count_sessions(server: ServerThread) -> int:
    async def count() -> int:
        state = server.server.config.loaded_app
        while not hasattr(state, "state"):
            state = state.app
        return int(await state.state.store.count_sessions(API_KEY))

    return await asyncio.wrap_future(server.run_coroutine(count()))


async def test_a_thousand_demo_joins_from_one_address_are_mostly_refused(tmp_path: pathlib.Path) -> None:
    with ServerThread(_demo_config(tmp_path)) as server:
        started = time.monotonic()
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=server.url) as client:
            for i in range(1000):
                r = await client.post("/demo/join", json={"room": f"room{i}", "name": "n"})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["code"] == "rate_limited" and r.json()["message"]
                    assert int(r.headers["retry-after"]) >= 1
                else:
                    assert r.status_code == 200, r.text
            # Garbage is refused by the rate limit too, before it is validated.
            assert (await client.post("/demo/join", content=b"{")).status_code == 429
        elapsed = time.monotonic() - started
        allowed = statuses.count(200)
        print(f"1000 demo joins in {elapsed:.1f} s: {allowed} allowed, {statuses.count(429)} refused")
        assert statuses[:5] == [200] * 5, "the burst is let through"
        assert allowed <= 5 + elapsed / 10 + 1, f"{allowed} joins allowed in {elapsed:.1f} s"
        assert statuses.count(429) == 1000 - allowed
        assert await _count_sessions(server) == allowed


def test_the_demo_rate_limit_is_per_client_address_behind_a_trusted_proxy(tmp_path: pathlib.Path) -> None:
    def joins(server: ServerThread, forwarded_for: str, n: int) -> list[int]:
        headers = {"X-Forwarded-For": forwarded_for}
        return [
            httpx.post(
                server.url + "/demo/join", json={"room": "r", "name": "n"}, headers=headers
            ).status_code
            for _ in range(n)
        ]

    config = _demo_config(tmp_path, demo_rate_burst=2, demo_rate_interval=600.0)
    with ServerThread(config) as server:  # no trusted proxy: X-Forwarded-For is not believed
        assert joins(server, "203.0.113.1", 3) == [200, 200, 429]
        assert joins(server, "203.0.113.2", 1) == [429]
    proxied = _demo_config(
        tmp_path, demo_rate_burst=2, demo_rate_interval=600.0, forwarded_allow_ips="127.0.0.1"
    )
    with ServerThread(proxied) as server:
        assert joins(server, "203.0.113.1", 3) == [200, 200, 429]
        assert joins(server, "203.0.113.2", 3) == [200, 200, 429]


@pytest.mark.parametrize("demo", [True, False])
def test_start_up_says_whether_the_demo_endpoint_is_on(tmp_path: pathlib.Path, demo: bool) -> None:
    args = ["--no-media"] + ([] if demo else ["--no-demo"])
    with ServeProcess(tmp_path, API_KEY, API_SECRET, args) as server:
        status = httpx.post(server.url + "/demo/join", json={"room": "r", "name": "n"}).status_code
    assert status == (200 if demo else 404)
    said = "the demo endpoint POST /demo/join is on" in server.output
    assert said == demo, server.output
    if demo:
        assert "--no-demo" in server.output


DEEP = ["[" * 30_000, '{"a":' * 30_000, "[" * 30_000 + "]" * 30_000]


def test_deeply_nested_json_gets_400_on_every_json_route(server: RunningServer) -> None:
    session_id = server.session()
    p = f"/v2/project/{API_KEY}/session/{session_id}"
    routes = [
        ("POST", "/session/create"),
        ("POST", p + "/signal"),
        ("POST", p + "/connection/c1/signal"),
        ("PUT", p + "/stream"),
        ("POST", p + "/mute"),
        ("POST", "/demo/join"),
    ]
    with httpx.Client(base_url=server.url) as client:
        for method, path in routes:
            for body in DEEP:
                headers = {**auth_header(), "Content-Type": "application/json"}
                r = client.request(method, path, content=body, headers=headers)
                assert r.status_code == 400, (method, path, r.status_code, r.text[:200])
                assert r.json()["code"] == "invalid_request" and r.json()["message"]
        assert client.get(p + "/stream", headers=auth_header()).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-body-size", "100"], "--max-body-size must be at least 1024 bytes"),
        (["--demo-rate-burst", "0"], "--demo-rate-burst must be at least 1"),
        (["--demo-rate-interval", "0"], "--demo-rate-interval must be above 0"),
        (["--router-spread-consumers", "0"], "--router-spread-consumers must be at least 1"),
    ],
)
def test_serve_refuses_bad_limits(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "salon", "serve", "--port", "0", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and f"salon: error: {message}" in done.stderr, done.stderr
