"""``salon bench callbacks``: callback delivery delay under load, and the outbox's throughput.

* **The receiver** is a minimal HTTP/1.1 server (keep-alive, answers ``204`` at once) in its
  own process (``multiprocessing`` *spawn*) on 127.0.0.1 and a free port. It stamps every
  request with the wall clock (``time.time_ns()``) when its body is complete and keeps the
  body; it does nothing else, so it is never the bottleneck.
* **The server** is the real ``python -m salon serve`` (127.0.0.1, port 0, fresh SQLite,
  ``--no-media``: callbacks do not involve the SFU) started with ``--callback-url`` pointing
  at the receiver.

1. **Delay at a steady rate** (``--rate`` events/s, 200 by default, for ``--duration``
   seconds): events come from real signalling. Each of ``--sessions`` sessions holds one
   *anchor* connection for the whole run (so that no ``sessionCreated``/``sessionDestroyed``
   interleaves), and short-lived connections join and leave on a fixed schedule, round-robin
   over the sessions: each join is a ``connectionCreated`` callback and each leave a
   ``connectionDestroyed`` one, so ``rate / 2`` joins per second make ``rate`` events per
   second. The **delay** of a callback is its arrival at the receiver minus its ``timestamp``
   field (the moment the server observed the event, in ms since the epoch; both clocks are
   this machine's wall clock, so the resolution is 1 ms). It covers the in-memory queue, the
   outbox write (a database transaction), the dispatcher's pick-up and the HTTP request.
2. **Throughput of a pre-filled outbox** (``--prefill`` callbacks over ``--prefill-sessions``
   order keys): the callbacks are written into the outbox of a fresh database before the
   server starts (``Store.add_callbacks``, realistic ``connectionCreated`` bodies); the server
   then drains it at start-up. Throughput = callbacks / (last arrival - first arrival).

The JSON report goes to stdout, progress to stderr. Every wait is bounded; only 127.0.0.1 is
used; secrets and tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from salon.bench._harness import (
    BenchError,
    ServerProcess,
    machine,
    machine_line,
    percentile,
    process_cpu,
    raise_nofile,
    run_and_report,
)

__all__ = ["run_callbacks_bench"]

_DRAIN_TIMEOUT = 120.0
_CONNECT_TIMEOUT = 10.0


def _log(message: str) -> None:
    print(f"salon bench callbacks: {message}", file=sys.stderr, flush=True)


def run_callbacks_bench(args: argparse.Namespace) -> int:
    """``salon bench callbacks``: run it, print the JSON report; 0 when every callback arrived
    before the run ended (1 when some were still in the outbox: delivery did not keep up)."""

    def delivered(report: dict[str, Any]) -> bool:
        throughput = report.get("throughput") or {}
        undelivered = int(report["delay"]["undelivered"]) + int(throughput.get("undelivered", 0))
        if undelivered:
            _log(f"{undelivered} callbacks were still in the outbox at the end (not delivered in time)")
        return undelivered == 0

    return run_and_report("callbacks", lambda: _bench(args), delivered)


# -- the receiver ------------------------------------------------------------------------------


class _Receiver(asyncio.Protocol):
    """One HTTP/1.1 connection: every complete request is stamped, kept and answered 204."""

    def __init__(self, arrivals: list[tuple[int, bytes]]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.arrivals.append((time.time_ns(), body))
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


def _receiver_main(pipe: multiprocessing.connection.Connection) -> None:
    """The receiver process: serve until the pipe says ``stop``; ``take`` hands the arrivals over."""

    async def serve() -> None:
        arrivals: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Receiver(arrivals), "127.0.0.1", 0)
        pipe.send(server.sockets[0].getsockname()[1])
        while True:
            if not await loop.run_in_executor(None, pipe.poll, 0.2):
                continue
            command = pipe.recv()
            if command == "take":
                pipe.send([(t, body.decode("utf-8", "replace")) for t, body in arrivals])
                arrivals.clear()
            elif command == "count":
                pipe.send(len(arrivals))
            else:
                break
        server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


class _ReceiverProcess:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_receiver_main, args=(child,), name="salon-bench-receiver", daemon=True
        )
        self.process.start()
        child.close()
        self.port: int = self._reply(30)

    def _reply(self, timeout: float) -> Any:
        if not self.pipe.poll(timeout):
            raise BenchError(f"the receiver process did not answer in {timeout:.0f} s")
        return self.pipe.recv()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callbacks"

    def count(self) -> int:
        self.pipe.send("count")
        count: int = self._reply(10)
        return count

    def take(self) -> list[tuple[int, dict[str, Any]]]:
        self.pipe.send("take")
        return [(t, json.loads(body)) for t, body in self._reply(30)]

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.send("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# -- the signalling load ------------------------------------------------------------------------


class _Connection:
    """One signalling WebSocket: joined, pings answered, everything else discarded."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def join(cls, url: str, session_id: str, token: str) -> _Connection:
        import websockets

        ws = await websockets.connect(url, compression=None, max_size=None)
        try:
            request = {"type": "connect", "request_id": 1, "session_id": session_id, "token": token}
            await ws.send(json.dumps(request))
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("type") == "connected":
                        break
                    if message.get("type") == "error":
                        raise BenchError(f"connect refused: {message.get('message', message)}")
        except BaseException:
            await ws.close()
            raise
        return cls(ws)

    async def _read(self) -> None:
        import websockets

        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                if '"type":"ping"' in raw:
                    await self.ws.send('{"type":"pong"}')

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def _steady_load(
    server: ServerProcess, sessions: list[str], rate: float, duration: float, hold: float
) -> dict[str, Any]:
    """Joins at ``rate / 2`` per second, each leaving after ``hold`` s; anchors held throughout."""
    url = f"ws://127.0.0.1:{server.port}/signalling"
    anchors = [await _Connection.join(url, s, server.token(s)) for s in sessions]
    joins = int(duration * rate / 2)
    interval = 2 / rate
    failures: list[str] = []
    late = 0
    tasks: set[asyncio.Task[None]] = set()

    async def visit(session_id: str) -> None:
        try:
            connection = await _Connection.join(url, session_id, server.token(session_id))
        except (BenchError, OSError, TimeoutError) as exc:
            failures.append(str(exc)[:200])
            return
        await asyncio.sleep(hold)
        await connection.close()

    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    try:
        for i in range(joins):
            at = start + i * interval
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                late += 1
            task = loop.create_task(visit(sessions[i % len(sessions)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=hold + 30)
    finally:
        for anchor in anchors:
            await anchor.close()
    return {"joins": joins, "failures": failures, "late_joins": late, "elapsed": loop.time() - start}


# -- the phases ----------------------------------------------------------------------------------


def _rate(arrivals_ns: list[int]) -> float | None:
    """Arrivals per second between the first and the last."""
    if len(arrivals_ns) < 2:
        return None
    span = (max(arrivals_ns) - min(arrivals_ns)) / 1e9
    return round((len(arrivals_ns) - 1) / span, 1) if span else None


def _delay_phase(args: argparse.Namespace, tmp: pathlib.Path, receiver: _ReceiverProcess) -> dict[str, Any]:
    server = ServerProcess(tmp, serve_args=["--no-media", "--callback-url", receiver.url])
    try:
        server.start()
        _log(f"server pid {server.pid} on {server.url}; receiver on port {receiver.port}")
        sessions = [server.create_session() for _ in range(args.sessions)]
        # Anchors' sessionCreated / connectionCreated callbacks arrive first: set them aside.
        receiver.wait_for(2 * len(sessions), 20)
        cpu0 = sum(process_cpu(server.pid))
        _log(f"{args.rate:g} events/s for {args.duration:g} s over {args.sessions} sessions")
        load = asyncio.run(_steady_load(server, sessions, args.rate, args.duration, args.hold))
        cpu = sum(process_cpu(server.pid)) - cpu0
        expected = 2 * (load["joins"] - len(load["failures"]))
        # + each anchor's sessionCreated, connectionCreated, connectionDestroyed, sessionDestroyed
        arrived_all = receiver.wait_for(expected + 4 * len(sessions), _DRAIN_TIMEOUT)
        if not arrived_all:
            _log("warning: not every callback arrived within the drain timeout")
    finally:
        server.stop()
    arrivals = receiver.take()
    ours = set(sessions)
    visits = [
        (t, body)
        for t, body in arrivals
        if body.get("event") in ("connectionCreated", "connectionDestroyed") and body["sessionId"] in ours
    ]
    # The anchors' own join and leave are outside the steady window.
    visits.sort(key=lambda item: item[1]["timestamp"])
    steady = visits[len(sessions) : len(visits) - len(sessions)] if len(visits) > 2 * len(sessions) else []
    delays = [t / 1e6 - body["timestamp"] for t, body in steady]
    ordered = sorted(delays)
    stamps = [body["timestamp"] for _, body in steady]
    span_s = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0

    def ms(q: float) -> float | None:
        value = percentile(ordered, q, presorted=True)
        return None if value is None else round(value, 2)

    return {
        "rate_asked": args.rate,
        "rate_generated": round(len(steady) / span_s, 1) if span_s else None,
        "duration_s": args.duration,
        "sessions": args.sessions,
        "joins": load["joins"],
        "join_failures": len(load["failures"]),
        "join_failure_examples": load["failures"][:3],
        "late_joins": load["late_joins"],
        "callbacks_measured": len(steady),
        "events": dict(Counter(body.get("event") for _, body in arrivals)),
        # Not delivered before the server stopped (still in the outbox, not lost).
        "undelivered": max(0, expected - (len(visits) - 2 * len(sessions))),
        "delivered_per_second_under_load": _rate([t for t, _ in steady]),
        "delay_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0), "min": ms(0.0)},
        "server_cpu_seconds": round(cpu, 2),
        "server_cpu_us_per_callback": round(cpu / len(steady) * 1e6, 1) if steady else None,
    }


async def _prefill(data_dir: pathlib.Path, server: ServerProcess, count: int, keys: int) -> None:
    from salon.store import NewCallback, Store, database_url_for

    store = Store(database_url_for(data_dir))
    await store.open()
    try:
        await store.create_project("bench", api_key=server.api_key, api_secret=server.api_secret)
        now = int(time.time() * 1000)
        callbacks = []
        for i in range(count):
            session_id = f"bench-outbox-{i % keys}"
            body = {
                "sessionId": session_id,
                "projectId": server.api_key,
                "event": "connectionCreated",
                "timestamp": now,
                "connection": {"id": f"connection-{i}", "createdAt": now, "data": f"n={i}"},
            }
            callbacks.append(
                NewCallback(
                    api_key=server.api_key,
                    kind="session",
                    order_key=session_id,
                    body=json.dumps(body, separators=(",", ":")),
                    created_at=now,
                )
            )
        await store.add_callbacks(callbacks)
    finally:
        await store.close()


def _throughput_phase(
    args: argparse.Namespace, tmp: pathlib.Path, receiver: _ReceiverProcess
) -> dict[str, Any]:
    server = ServerProcess(tmp, serve_args=["--no-media", "--callback-url", receiver.url])
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    asyncio.run(_prefill(tmp / "data", server, args.prefill, args.prefill_sessions))
    _log(f"outbox pre-filled with {args.prefill} callbacks over {args.prefill_sessions} sessions")
    receiver.take()
    try:
        server.start()
        arrived_all = receiver.wait_for(args.prefill, _DRAIN_TIMEOUT)
        cpu = sum(process_cpu(server.pid))
    finally:
        server.stop()
    arrivals = receiver.take()
    if not arrived_all:
        _log(f"warning: {len(arrivals)} of {args.prefill} callbacks arrived within {_DRAIN_TIMEOUT:.0f} s")
    times = sorted(t for t, _ in arrivals)
    seconds = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0
    per_key = Counter(body["sessionId"] for _, body in arrivals)
    in_order = all(
        [int(b["connection"]["id"].split("-")[1]) for _, b in arrivals if b["sessionId"] == key]
        == sorted(int(b["connection"]["id"].split("-")[1]) for _, b in arrivals if b["sessionId"] == key)
        for key in list(per_key)[:10]
    )
    return {
        "prefilled": args.prefill,
        "sessions": args.prefill_sessions,
        "delivered": len(arrivals),
        "undelivered": args.prefill - len({b["connection"]["id"] for _, b in arrivals}),
        "duplicates": len(arrivals) - len({b["connection"]["id"] for _, b in arrivals}),
        "in_order_within_session": in_order,
        "drain_seconds": round(seconds, 2),
        "callbacks_per_second": round((len(times) - 1) / seconds, 1) if seconds else None,
        "server_cpu_seconds_total": round(cpu, 2),
    }


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    if not 2 <= args.rate <= 5000:
        raise BenchError("--rate must be 2..5000 events/s")
    if not 1 <= args.duration <= 600:
        raise BenchError("--duration must be 1..600 s")
    if not 1 <= args.sessions <= 1000:
        raise BenchError("--sessions must be 1..1000")
    if not 0 <= args.prefill <= 1_000_000 or not 1 <= args.prefill_sessions <= 100_000:
        raise BenchError("--prefill must be 0..1000000 and --prefill-sessions 1..100000")
    if not 0 <= args.hold <= 60:
        raise BenchError("--hold must be 0..60 s")
    machine_description = machine()  # the load average before anything of ours runs
    _log(machine_line(machine_description))
    raise_nofile()
    started = time.monotonic()
    receiver = _ReceiverProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="salon-bench-callbacks-") as tmp:
            (pathlib.Path(tmp) / "delay").mkdir()
            delay = _delay_phase(args, pathlib.Path(tmp) / "delay", receiver)
            _log(
                f"delay at {delay['rate_generated']} events/s: p50 {delay['delay_ms']['p50']} ms, "
                f"p99 {delay['delay_ms']['p99']} ms, undelivered at the end {delay['undelivered']}"
            )
            throughput = None
            if args.prefill:
                (pathlib.Path(tmp) / "outbox").mkdir()
                throughput = _throughput_phase(args, pathlib.Path(tmp) / "outbox", receiver)
                _log(f"outbox drained at {throughput['callbacks_per_second']} callbacks/s")
    finally:
        receiver.stop()
    machine_description["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "callbacks",
        "machine": machine_description,
        "delay": delay,
        "throughput": throughput,
        "database": "SQLite (the default store)",
        "total_seconds": round(time.monotonic() - started, 1),
    }
