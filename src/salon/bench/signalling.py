"""``salon bench``: benchmarks of a real salon server, run on this machine.

``salon bench signalling`` measures the signalling plane under one large session.

* **What runs where.** The server is the real ``python -m salon serve`` in a *separate
  process*, listening on 127.0.0.1 only, with a fresh SQLite database in a temporary
  directory and a generated project (``SALON_API_KEY``/``SALON_API_SECRET`` in its
  environment only). The bench process creates one session through the REST API
  (``POST /session/create``) and mints one token per connection with
  :func:`salon.tokens.generate_token`. The clients live in ``--workers`` load-generator
  processes (``multiprocessing``, spawn; one by default), each on a uvloop event loop, driven
  over a pipe with a request/reply handshake (``connect``, ``arm``, ``send``, ``collect``,
  ``stats``, ``close``).
* **Lean clients.** By default each connection is :class:`_RawClient`, a minimal RFC 6455
  client on a bare asyncio protocol (it offers permessage-deflate, as browsers do; see
  ``--compression``): each received chunk is time-stamped once with
  ``time.monotonic_ns()`` (CLOCK_MONOTONIC, system-wide on Linux, so comparable across
  processes), its frames are cut out and inflated, and the message is only searched for the
  benchmark's marker; pings are answered. ``--client websockets`` uses the ``websockets``
  asyncio client instead, as a cross-check: it costs about twice the CPU per message and,
  on two cores, inflates the latencies it measures.
* **Memory per idle connection.** A few connections warm the server up (imports, caches,
  the signal path); once its CPU is quiet and it has been idle for ``--idle`` seconds, its
  memory is read from ``/proc/PID/smaps_rollup`` (RSS, PSS and USS = private pages). The
  same is read after all ``--connections`` joined and the server went idle again. The
  difference divided by the number of added connections is the cost of one idle connection
  (including what the allocator kept from the ``connection_created`` fan-out of the joins).
* **Fan-out latency.** One connection sends ``--signals`` signals to the whole session, one
  every ``--interval`` seconds; the server delivers each to every connection, the sender
  included. For each signal the time to reach everyone is the latest arrival minus the send
  time; per-receiver latencies are every arrival minus its send time. Arrival is when the
  client's event loop sees the bytes, so the figures are an upper bound of the server's
  share (the load generator's CPU per message is reported to show it kept up). The
  server's heartbeat (a ping to every connection every 2 s, then the pongs) competes with
  the signals: ping arrivals are recorded too, and the fan-out of the signals that did not
  overlap a ping round is given apart.
* **Server CPU.** ``utime`` and ``stime`` of the server process (``/proc/PID/stat``) over
  the signal phase, divided by the messages delivered; also with the idle CPU rate (the
  heartbeat) measured before the phase subtracted. The CPU the rest of the machine used
  meanwhile (``/proc/stat`` minus the server, the workers and this process) is reported:
  it should be near 0.
* **Several nodes** (``--nodes N``): a throwaway redis-server and PostgreSQL and N cluster nodes;
  worker *i* connects to node *i mod N*. ``--connect-rate`` paces the connects (per second, over
  all workers) and the signals start only once the clients have received no join announcement
  for 3 s (the joins are O(N²) messages), so the signal fan-out is measured, not the join
  storm; ``--node-timeout`` is passed to the nodes; CPU is reported per node and per
  load-generator process; ``--log-dir`` keeps the nodes' logs.
* **Correctness.** ``lost`` counts (signal, connection) pairs that never arrived;
  ``disconnected`` counts connections the server closed. Both must be 0, or the command
  exits with status 1.

The JSON report goes to stdout; progress and errors go to stderr. Secrets and tokens are
never printed. Every wait is bounded, so the command always ends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import platform
import secrets
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

from salon.bench._harness import (
    BenchError,
    ServerProcess,
    machine,
    machine_line,
    percentile,
    raise_nofile,
    run_and_report,
    version,
)

__all__ = ["run_signalling_bench"]

#: The targets the signalling benchmark checks, at 1,000 connections.
FANOUT_P99_TARGET_MS = 250.0
RSS_PER_CONNECTION_TARGET_KB = 100.0

_PATH = "/signalling"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PONG = '{"type":"pong"}'
_PONG_B = _PONG.encode()
_PING = '"type":"ping"'
_PING_B = _PING.encode()
_SEQ_DIGITS = 6
#: Bounds: the command must always end.
_MAX_CONNECTIONS = 10_000
_MAX_SIGNALS = 10_000
_CONNECT_TIMEOUT = 120.0
_QUIET_TIMEOUT = 20.0
_REPLY_GRACE = 15.0


def _log(message: str) -> None:
    print(f"salon bench: {message}", file=sys.stderr, flush=True)


def run_signalling_bench(args: argparse.Namespace) -> int:
    """``salon bench signalling``: run it, print its JSON report, return the exit code."""
    return run_and_report(
        "signalling",
        lambda: _bench_signalling(args),
        lambda report: report.get("lost", 0) == 0 and report.get("disconnected", 0) == 0,
    )


# -- the machine -----------------------------------------------------------------------------


def _system_cpu() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine so far (``/proc/stat``)."""
    fields = pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


# -- the load-generator workers --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerConfig:
    host: str
    port: int
    session_id: str
    marker: str
    compression: bool
    """Offer permessage-deflate, as browsers do."""
    client: str
    """``raw`` (:class:`_RawClient`) or ``websockets`` (the library's asyncio client)."""
    concurrency: int

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{_PATH}"


def _worker_main(pipe: Connection, config: _WorkerConfig) -> None:
    """The entry point of a load-generator process."""
    with contextlib.suppress(KeyboardInterrupt):
        raise_nofile()
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_Worker(pipe, config).main())


class _Client:
    """What the worker needs of one signalling connection, whatever the client library."""

    async def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _RawClient(asyncio.Protocol, _Client):
    """A minimal RFC 6455 client on a bare asyncio protocol: the leanest possible receiver.

    Each received chunk is time-stamped once, its frames are cut out of the bytes, inflated
    if the server compressed them, and the message is searched for the benchmark's marker;
    nothing else is parsed. Pings (``{"type":"ping"}`` messages and WebSocket ping frames)
    are answered. Frames it sends are masked, as a client's must be.
    """

    def __init__(self, worker: _Worker, index: int, token: str) -> None:
        self.worker = worker
        self.index = index
        self._token: str | None = token
        self._key = base64.b64encode(secrets.token_bytes(16)).decode()
        self._buffer = b""
        self._upgraded = False
        self._inflate: Any = None
        self._reset_inflate = False
        self._fragments: list[bytes] = []
        self._fragments_compressed = False
        self._close_sent = False
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        config = self.worker.config
        lines = [
            f"GET {_PATH} HTTP/1.1",
            f"Host: {config.host}:{config.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
        ]
        if config.compression:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("the server closed the connection"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.worker.gone(self.index)

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic_ns()
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if not self._upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                return
            self._upgrade(data[:end])
            data = data[end + 4 :]
        size = len(data)
        pos = 0
        while size - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            if second & 0x80:
                self._fail("the server masked a frame")
                return
            self._frame(first, data[pos + head : end], arrived)
            pos = end
        if pos < size:
            self._buffer = data[pos:]

    # -- frames ------------------------------------------------------------------------------

    def _upgrade(self, head: bytes) -> None:
        status, *header_lines = head.decode("latin-1").split("\r\n")
        if not status.startswith("HTTP/1.1 101"):
            self._fail(f"the server refused the upgrade: {status[:100]}")
            return
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1((self._key + _WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self._fail("the server answered a wrong Sec-WebSocket-Accept")
            return
        extensions = headers.get("sec-websocket-extensions", "")
        if "permessage-deflate" in extensions:
            self._reset_inflate = "server_no_context_takeover" in extensions
            self._inflate = zlib.decompressobj(-15)
        self._upgraded = True
        token, self._token = self._token, None
        connect = {
            "type": "connect",
            "request_id": 1,
            "session_id": self.worker.config.session_id,
            "token": token,
            "client": "salon-bench",
        }
        self._write(0x1, json.dumps(connect).encode())

    def _frame(self, first: int, payload: bytes, arrived: int) -> None:
        opcode = first & 0x0F
        if opcode == 0x1 or opcode == 0x2:
            if first & 0x80:
                self._message(self._inflated(payload) if first & 0x40 else payload, arrived)
            else:
                self._fragments = [payload]
                self._fragments_compressed = bool(first & 0x40)
        elif opcode == 0x0:
            self._fragments.append(payload)
            if first & 0x80:
                whole = b"".join(self._fragments)
                self._fragments = []
                self._message(self._inflated(whole) if self._fragments_compressed else whole, arrived)
        elif opcode == 0x9:
            self._write(0xA, payload)
        elif opcode == 0x8:
            if not self._close_sent:
                self._close_sent = True
                self._write(0x8, payload[:2])
            assert self.transport is not None
            self.transport.close()

    def _inflated(self, payload: bytes) -> bytes:
        if self._inflate is None:
            self._fail("a compressed frame without permessage-deflate")
            return b""
        data: bytes = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
        if self._reset_inflate:
            self._inflate = zlib.decompressobj(-15)
        return data

    def _message(self, message: bytes, arrived: int) -> None:
        worker = self.worker
        pos = message.find(worker.marker)
        if pos >= 0:
            start = pos + worker.marker_length
            worker.record(self.index, int(message[start : start + _SEQ_DIGITS]), arrived)
        elif _PING_B in message:
            worker.ping(arrived)
            self._write(0x1, _PONG_B)
        elif not self.connected.done():
            if b'"type":"connected"' in message:
                self.connected.set_result(None)
            else:
                self._fail(f"connect refused: {message[:200].decode('utf-8', 'replace')}")
        else:
            worker.other_messages += 1

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
        mask = secrets.token_bytes(4)
        if size:
            key = (mask * (size // 4 + 1))[:size]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        transport.write(header + mask + payload)

    def _fail(self, reason: str) -> None:
        if not self.connected.done():
            self.connected.set_exception(RuntimeError(reason))
        if self.transport is not None:
            self.transport.abort()

    # -- _Client -----------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        self._write(0x1, text.encode())

    async def close(self) -> None:
        if not self._close_sent and self._upgraded:
            self._close_sent = True
            self._write(0x8, (1000).to_bytes(2, "big"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), 5)
        if self.transport is not None:
            self.transport.abort()


class _LibraryClient(_Client):
    """The ``websockets`` asyncio client, for a cross-check of :class:`_RawClient`."""

    def __init__(self, worker: _Worker, index: int, ws: Any) -> None:
        self.worker = worker
        self.index = index
        self.ws = ws
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        import websockets

        worker, index, ws = self.worker, self.index, self.ws
        marker, skip = worker.marker.decode(), worker.marker_length
        now = time.monotonic_ns
        try:
            while True:
                message: str = await ws.recv(decode=True)
                arrived = now()
                pos = message.find(marker)
                if pos >= 0:
                    worker.record(index, int(message[pos + skip : pos + skip + _SEQ_DIGITS]), arrived)
                elif _PING in message:
                    worker.ping(arrived)
                    await ws.send(_PONG)
                else:
                    worker.other_messages += 1
        except websockets.ConnectionClosed:
            pass
        finally:
            worker.gone(index)

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class _Worker:
    """Many lean signalling clients in one event loop, driven by the bench process."""

    def __init__(self, pipe: Connection, config: _WorkerConfig) -> None:
        self.pipe = pipe
        self.config = config
        self.marker = config.marker.encode()
        self.marker_length = len(self.marker)
        self.clients: list[_Client | None] = []
        self.recording: list[list[int]] | None = None
        self.remaining = 0
        self.done = asyncio.Event()
        self.closed = 0
        self.other_messages = 0
        self.pings = 0
        self.ping_ns: list[int] = []
        self._cpu_start = 0.0

    async def main(self) -> None:
        try:
            while True:
                try:
                    command, params = await asyncio.to_thread(self.pipe.recv)
                except EOFError:
                    return
                if command == "close":
                    await self.close()
                    self.pipe.send(("closed", {}))
                    return
                handler = getattr(self, f"cmd_{command}")
                try:
                    reply: dict[str, Any] = await handler(**params)
                except Exception as exc:
                    self.pipe.send(("error", {"message": f"{command}: {exc!r}"[:500]}))
                else:
                    self.pipe.send(("ok", reply))
        finally:
            await self.close()

    # -- what the clients report ---------------------------------------------------------------

    def record(self, index: int, seq: int, arrived: int) -> None:
        recording = self.recording
        if recording is not None and seq < len(recording) and not recording[seq][index]:
            recording[seq][index] = arrived
            self.remaining -= 1
            if self.remaining <= 0:
                self.done.set()

    def ping(self, arrived: int) -> None:
        self.pings += 1
        if self.recording is not None:
            self.ping_ns.append(arrived)

    def gone(self, index: int) -> None:
        self.closed += 1
        if self.recording is not None:
            # Nothing more will arrive on this connection: do not wait for it.
            self.remaining -= sum(1 for row in self.recording if not row[index])
            if self.remaining <= 0:
                self.done.set()

    # -- commands ----------------------------------------------------------------------------

    async def cmd_connect(self, tokens: list[str], rate: float = 0.0) -> dict[str, Any]:
        """Open one connection per token (``concurrency`` handshakes at a time; when ``rate``
        is set, the i-th starts no sooner than i / ``rate`` seconds from now)."""
        semaphore = asyncio.Semaphore(self.config.concurrency)
        first = len(self.clients)
        self.clients.extend([None] * len(tokens))
        started = time.monotonic()
        cpu0 = time.process_time()
        results = await asyncio.gather(
            *(
                self._open(first + i, token, semaphore, i / rate if rate > 0 else 0.0)
                for i, token in enumerate(tokens)
            ),
            return_exceptions=True,
        )
        errors = [repr(r)[:300] for r in results if isinstance(r, BaseException)]
        return {
            "connected": sum(c is not None for c in self.clients),
            "failed": len(errors),
            "errors": errors[:3],
            "seconds": time.monotonic() - started,
            "cpu_seconds": time.process_time() - cpu0,
        }

    async def cmd_stats(self) -> dict[str, Any]:
        return {"other_messages": self.other_messages, "pings": self.pings, "closed": self.closed}

    async def cmd_arm(self, count: int) -> dict[str, Any]:
        """Get ready to record ``count`` signals on every connection."""
        self.recording = [[0] * len(self.clients) for _ in range(count)]
        self.remaining = count * sum(c is not None for c in self.clients)
        self.done.clear()
        if self.remaining == 0:
            self.done.set()
        self._cpu_start = time.process_time()
        self.ping_ns = []
        return {}

    async def cmd_send(self, count: int, interval: float) -> dict[str, Any]:
        """Send ``count`` signals to the session from the first connection, on a fixed schedule."""
        client = self.clients[0]
        if client is None:
            raise RuntimeError("the sending connection is not open")
        loop = asyncio.get_running_loop()
        send_ns: list[int] = []
        start = loop.time()
        for seq in range(count):
            delay = start + seq * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            request = {
                "type": "signal",
                "request_id": seq + 2,
                "signal_type": "bench",
                "data": f"{self.config.marker}{seq:0{_SEQ_DIGITS}d}",
            }
            text = json.dumps(request, separators=(",", ":"))
            send_ns.append(time.monotonic_ns())
            await client.send_text(text)
        return {"send_ns": send_ns}

    async def cmd_collect(self, timeout: float) -> dict[str, Any]:
        """Wait (at most ``timeout`` s) until every signal reached every connection; report."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        recording, self.recording = self.recording or [], None
        return {
            "arrivals": recording,
            "received": sum(1 for row in recording for t in row if t),
            "cpu_seconds": time.process_time() - self._cpu_start,
            "ping_ns": self.ping_ns,
            "closed": self.closed,
        }

    # -- connections -------------------------------------------------------------------------

    async def _open(self, index: int, token: str, semaphore: asyncio.Semaphore, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        async with semaphore:
            if self.config.client == "raw":
                self.clients[index] = await self._open_raw(index, token)
            else:
                self.clients[index] = await self._open_library(index, token)

    async def _open_raw(self, index: int, token: str) -> _Client:
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(
            loop.create_connection(
                lambda: _RawClient(self, index, token), self.config.host, self.config.port
            ),
            30,
        )
        try:
            await asyncio.wait_for(asyncio.shield(client.connected), 30)
        except BaseException:
            if client.transport is not None:
                client.transport.abort()
            raise
        return client

    async def _open_library(self, index: int, token: str) -> _Client:
        import websockets

        ws = await websockets.connect(
            self.config.url,
            compression="deflate" if self.config.compression else None,
            ping_interval=None,
            open_timeout=30,
            close_timeout=5,
            max_size=2**22,
            user_agent_header=None,
        )
        connect = {
            "type": "connect",
            "request_id": 1,
            "session_id": self.config.session_id,
            "token": token,
            "client": "salon-bench",
        }
        try:
            await ws.send(json.dumps(connect))
            first = await asyncio.wait_for(ws.recv(decode=True), 30)
            if '"type":"connected"' not in first:
                # The server's error message, never the request (which holds the token).
                raise RuntimeError(f"connect refused: {first[:200]}")
        except BaseException:
            await ws.close()
            raise
        return _LibraryClient(self, index, ws)

    async def close(self) -> None:
        clients = [c for c in self.clients if c is not None]
        self.clients = []
        if clients:
            await asyncio.wait([asyncio.ensure_future(c.close()) for c in clients], timeout=10)


class _WorkerHandle:
    """The bench process's end of one worker: request/reply with timeouts."""

    def __init__(self, ctx: Any, index: int, config: _WorkerConfig) -> None:
        self.index = index
        self.pipe, child = ctx.Pipe()
        self.process: multiprocessing.process.BaseProcess = ctx.Process(
            target=_worker_main, args=(child, config), name=f"salon-bench-worker-{index}", daemon=True
        )
        self.process.start()
        child.close()

    def request(self, command: str, timeout: float, **params: Any) -> dict[str, Any]:
        self.post(command, **params)
        return self.reply(command, timeout)

    def post(self, command: str, **params: Any) -> None:
        self.pipe.send((command, params))

    def reply(self, command: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.5):
            if not self.process.is_alive():
                raise BenchError(f"worker {self.index} exited ({self.process.exitcode}) during {command!r}")
            if time.monotonic() > deadline:
                raise BenchError(f"worker {self.index} did not answer {command!r} in {timeout:.0f} s")
        try:
            status, body = self.pipe.recv()
        except EOFError:
            raise BenchError(f"worker {self.index} exited during {command!r}") from None
        if status != "ok":
            raise BenchError(f"worker {self.index}: {body.get('message', status)}")
        result: dict[str, Any] = body
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.send(("close", {}))
            if self.pipe.poll(15):
                self.pipe.recv()
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.pipe.close()


# -- the signalling benchmark ----------------------------------------------------------------


class _Servers:
    """Several nodes measured as one server: CPU summed, memory of the first (the sender's)."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        self.log_level = servers[0].log_level

    def cpu_times(self) -> tuple[float, float]:
        times = [s.cpu_times() for s in self.servers]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def cpu_seconds(self) -> float:
        return sum(self.cpu_times())

    def memory_kb(self) -> dict[str, int]:
        return self.servers[0].memory_kb()

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers)

    def cpu_each(self) -> list[float]:
        """CPU seconds of each node so far."""
        return [s.cpu_seconds() for s in self.servers]


def _wait_quiet(server: ServerProcess | _Servers, *, window: float = 0.5, threshold: float = 0.15) -> float:
    """Wait until the server used under ``threshold`` of a core in two windows in a row."""
    started = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - started < _QUIET_TIMEOUT:
        before = server.cpu_seconds()
        time.sleep(window)
        quiet = quiet + 1 if (server.cpu_seconds() - before) / window < threshold else 0
    return time.monotonic() - started


def _wait_received(workers: list[_WorkerHandle], *, still: float = 3.0, bound: float = 600.0) -> None:
    """Wait until the clients received no message besides pings for ``still`` seconds."""
    started = time.monotonic()
    last, since = -1, time.monotonic()
    while time.monotonic() - started < bound:
        count = sum(worker.request("stats", 30)["other_messages"] for worker in workers)
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= still:
            return
        time.sleep(0.5)


def _idle_sample(server: ServerProcess | _Servers, seconds: float) -> tuple[dict[str, int], float]:
    """Let the server idle for ``seconds``; its memory then, and its CPU rate meanwhile."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    rate = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    return server.memory_kb(), rate


def _signal_round(
    workers: list[_WorkerHandle], count: int, interval: float
) -> tuple[list[int], list[dict[str, Any]]]:
    """One round of ``count`` signals: arm everyone, send from worker 0, collect."""
    for worker in workers:
        worker.request("arm", 30, count=count)
    send_time = count * interval + 30
    sent = workers[0].request("send", send_time, count=count, interval=interval)
    collect = 10.0
    for worker in workers:
        worker.post("collect", timeout=collect)
    results = [worker.reply("collect", collect + _REPLY_GRACE) for worker in workers]
    return list(sent["send_ns"]), results


def _bench_signalling(args: argparse.Namespace) -> dict[str, Any]:
    connections: int = args.connections
    signals: int = args.signals
    interval: float = args.interval
    workers_wanted: int = getattr(args, "workers", 1)
    compression: str = getattr(args, "compression", "deflate")
    client: str = getattr(args, "client", "raw")
    idle: float = getattr(args, "idle", 4.0)
    nodes: int = getattr(args, "nodes", 1)
    connect_rate: float = getattr(args, "connect_rate", 0.0) or 0.0
    node_timeout: float | None = getattr(args, "node_timeout", None)
    if not 1 <= nodes <= 5:
        raise BenchError("--nodes must be between 1 and 5")
    if not 2 <= connections <= _MAX_CONNECTIONS:
        raise BenchError(f"--connections must be between 2 and {_MAX_CONNECTIONS}")
    if not 1 <= signals <= _MAX_SIGNALS or not 0 <= interval <= 10 or signals * interval > 600:
        raise BenchError("--signals must be 1 to 10,000 and --interval 0 to 10 s, for 10 minutes at most")
    if connections * signals > 5_000_000:
        raise BenchError("--connections times --signals must be at most 5,000,000")
    if not 1 <= workers_wanted <= 8:
        raise BenchError("--workers must be between 1 and 8")
    if not 0 <= idle <= 60:
        raise BenchError("--idle must be between 0 and 60 s")
    if not 0 <= connect_rate <= 10_000 or (connect_rate and connections / connect_rate > 600):
        raise BenchError("--connect-rate must be 0 (at once) to 10,000 per second, for 10 minutes at most")
    machine_description = machine()  # the load average before anything of ours runs
    _log(machine_line(machine_description))
    started = time.monotonic()
    limit = raise_nofile()
    needed = connections + 256
    if limit < needed:
        raise BenchError(f"the open-files limit is {limit}; {connections} connections need {needed}")
    warm = max(1, min(20, connections // 10))
    workers_count = min(workers_wanted, connections)
    with tempfile.TemporaryDirectory(prefix="salon-bench-") as tmp, contextlib.ExitStack() as infra:
        servers = [ServerProcess(pathlib.Path(tmp))]
        if nodes > 1:
            from salon.bench.infra import running_postgres, running_redis

            redis_url = infra.enter_context(running_redis()).url
            database_url = infra.enter_context(running_postgres()).url
            _log(f"throwaway redis-server ({redis_url}) and PostgreSQL ({database_url})")
            servers = []
            for i in range(nodes):
                (pathlib.Path(tmp) / f"node{i}").mkdir()
                cluster_args = ["--no-media", "--redis-url", redis_url, "--database-url", database_url]
                cluster_args += [
                    "--node-name",
                    f"bench-{i}",
                    "--node-address",
                    "127.0.0.1",
                    "--metrics-address",
                    "off",
                ]
                if node_timeout is not None:
                    cluster_args += ["--node-timeout", f"{node_timeout:g}"]
                node = ServerProcess(pathlib.Path(tmp) / f"node{i}", serve_args=cluster_args)
                if servers:
                    node.api_key, node.api_secret = servers[0].api_key, servers[0].api_secret
                servers.append(node)
        server = _Servers(servers) if nodes > 1 else servers[0]
        workers: list[_WorkerHandle] = []
        try:
            ports = []
            for node in servers:  # one at a time: the first creates the schema
                url = node.start()
                _log(f"server (pid {node.pid}) serving on {url}")
                ports.append(int(url.rsplit(":", 1)[1]))
            session_id = servers[0].create_session()
            tokens = servers[0].tokens(session_id, connections)
            port = ports[0]
            config = _WorkerConfig(
                host="127.0.0.1",
                port=port,
                session_id=session_id,
                marker=f"salon-bench-{secrets.token_hex(4)}:",
                compression=compression == "deflate",
                client=client,
                concurrency=50,
            )
            ctx = multiprocessing.get_context("spawn")
            # Worker i connects to node i mod nodes (the sender, on worker 0, to the first).
            workers = [
                _WorkerHandle(ctx, i, dataclasses.replace(config, port=ports[i % len(ports)]))
                for i in range(workers_count)
            ]

            # Warm-up: a few connections (the sender first) and a few signals.
            opened = workers[0].request("connect", _CONNECT_TIMEOUT, tokens=tokens[:warm])
            if opened["failed"]:
                raise BenchError(f"warm-up connections failed: {opened['errors']}")
            _signal_round(workers[:1], 3, 0.05)
            _wait_quiet(server)
            memory_warm, _ = _idle_sample(server, idle)
            _log(f"{warm} warm-up connections; server RSS {memory_warm['rss']} kB")

            # All connections, spread over the workers.
            rest = tokens[warm:]
            del tokens
            share = math.ceil(len(rest) / workers_count)
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            each0 = server.cpu_each() if isinstance(server, _Servers) else [cpu0]
            worker_rate = connect_rate / workers_count
            for i, worker in enumerate(workers):
                worker.post("connect", tokens=rest[i * share : (i + 1) * share], rate=worker_rate)
            # Paced, the connects take share / rate seconds on top of the handshakes.
            pace = share / worker_rate if worker_rate > 0 else 0.0
            opened_all = [worker.reply("connect", _CONNECT_TIMEOUT + pace) for worker in workers]
            del rest
            failed = sum(o["failed"] for o in opened_all)
            if failed:
                errors = [e for o in opened_all for e in o["errors"]]
                raise BenchError(f"{failed} connections failed, e.g. {errors[:3]}")
            total = sum(o["connected"] for o in opened_all)
            connect_seconds = time.monotonic() - t0
            # The join announcements (O(N²) messages) must all have arrived before the signals
            # are measured: wait until the clients stop receiving them, then until the servers
            # are quiet. (A CPU-quiet test alone is fooled by nodes starved of CPU.)
            settle_start = time.monotonic()
            _wait_received(workers)
            settle = time.monotonic() - settle_start + _wait_quiet(server)
            connect_cpu = server.cpu_seconds() - cpu0
            connect_wall = time.monotonic() - t0
            each1 = server.cpu_each() if isinstance(server, _Servers) else [server.cpu_seconds()]
            connect_node_cpu = [
                round((b - a) / connect_wall * 100, 1) for a, b in zip(each0, each1, strict=True)
            ]
            _log(
                f"{total} connections in {connect_seconds:.1f} s (+{settle:.1f} s for the fan-out to settle)"
            )
            memory_loaded, idle_cpu_rate = _idle_sample(server, idle)
            settled_other = sum(worker.request("stats", 30)["other_messages"] for worker in workers)
            _log(f"server RSS {memory_loaded['rss']} kB with {total} idle connections")

            # The signal phase.
            (user0, system0), t0 = server.cpu_times(), time.monotonic()
            each0 = server.cpu_each() if isinstance(server, _Servers) else [server.cpu_seconds()]
            (busy0, steal0), self0 = _system_cpu(), time.process_time()
            send_ns, results = _signal_round(workers, signals, interval)
            phase_seconds = time.monotonic() - t0
            each1 = server.cpu_each() if isinstance(server, _Servers) else [server.cpu_seconds()]
            load_after = [round(x, 2) for x in os.getloadavg()]
            user1, system1 = server.cpu_times()
            (busy1, steal1), self1 = _system_cpu(), time.process_time()
            server_user, server_system = user1 - user0, system1 - system0
            server_cpu = server_user + server_system
            _log(f"{signals} signals sent in {phase_seconds:.1f} s")
            stats = [worker.request("stats", 30) for worker in workers]
            if not server.alive():
                raise BenchError("the server died during the benchmark")
        finally:
            # The server first, while the clients still answer its closing handshakes.
            returncode = None
            for node in servers:
                returncode = node.stop() or returncode
            log_dir = getattr(args, "log_dir", None)
            if log_dir:  # the servers' logs, kept for a post-mortem
                for i, node in enumerate(servers):
                    source = node.data_dir / "server.log"
                    if source.exists():
                        target = pathlib.Path(log_dir) / f"server{i}.log"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(source.read_bytes())
            for worker in workers:
                worker.close()
            _log(f"server stopped (exit status {returncode})")

    fanout_ns: list[int] = []
    per_receiver_ns: list[int] = []
    received = 0
    for seq, sent_at in enumerate(send_ns):
        arrivals = [t for result in results for t in result["arrivals"][seq] if t]
        received += len(arrivals)
        per_receiver_ns.extend(t - sent_at for t in arrivals)
        fanout_ns.append(max(arrivals) - sent_at if len(arrivals) == total else -1)
    complete = [ns for ns in fanout_ns if ns >= 0]
    # The heartbeat (a ping to every connection every 2 s) competes with the signals.
    rounds = _heartbeat_rounds([t for result in results for t in result["ping_ns"]])
    overlapping = [
        any(start <= sent_at + ns and sent_at <= end for start, end in rounds)
        for sent_at, ns in zip(send_ns, fanout_ns, strict=True)
    ]
    clear = [ns for ns, hit in zip(fanout_ns, overlapping, strict=True) if ns >= 0 and not hit]
    added = total - warm
    per_connection = {
        name: round((memory_loaded[name] - memory_warm[name]) / added, 2) if added > 0 else None
        for name in ("rss", "pss", "uss")
    }
    # Anything else busy on the machine during the signal phase would skew the figures.
    known = server_cpu + sum(r["cpu_seconds"] for r in results) + (self1 - self0)
    machine_load = {
        "busy_cpus": round((busy1 - busy0) / phase_seconds, 2),
        "other_processes_cpus": round(max(busy1 - busy0 - known, 0.0) / phase_seconds, 2),
        "steal_cpus": round((steal1 - steal0) / phase_seconds, 2),
    }
    if machine_load["other_processes_cpus"] > 0.1:
        _log(
            f"warning: other processes used {machine_load['other_processes_cpus']} CPUs during the "
            "signal phase; the latencies are skewed"
        )
    client_cpu = max((r["cpu_seconds"] / r["received"] for r in results if r["received"]), default=None)
    fanout_p99 = _ms(percentile(complete, 0.99))
    report: dict[str, Any] = {
        "connections": total,
        "signals": signals,
        "interval_s": interval,
        "server_rss_kb_per_connection": per_connection["rss"],
        "server_pss_kb_per_connection": per_connection["pss"],
        "server_uss_kb_per_connection": per_connection["uss"],
        "server_memory_kb": {"warm": memory_warm, "loaded": memory_loaded, "warm_connections": warm},
        "signal_fanout_ms": {
            "p50": _ms(percentile(complete, 0.5)),
            "p95": _ms(percentile(complete, 0.95)),
            "p99": fanout_p99,
            "max": _ms(max(complete, default=None)),
            "complete_signals": len(complete),
        },
        "per_receiver_ms": {
            "p50": _ms(percentile(per_receiver_ns, 0.5)),
            "p95": _ms(percentile(per_receiver_ns, 0.95)),
            "p99": _ms(percentile(per_receiver_ns, 0.99)),
            "max": _ms(max(per_receiver_ns, default=None)),
        },
        "heartbeat": {
            "rounds": len(rounds),
            "signals_overlapping_a_round": sum(overlapping),
            "signal_fanout_ms_other_signals": {
                "p50": _ms(percentile(clear, 0.5)),
                "p99": _ms(percentile(clear, 0.99)),
                "max": _ms(max(clear, default=None)),
            },
        },
        "server_cpu_us_per_delivered_message": _per_message_us(server_cpu, received),
        "server_cpu_us_per_delivered_message_minus_idle": _per_message_us(
            max(server_cpu - idle_cpu_rate * phase_seconds, 0.0), received
        ),
        "server_idle_cpu_percent": round(idle_cpu_rate * 100, 2),
        "server_cpu_signal_phase_s": {"user": round(server_user, 2), "system": round(server_system, 2)},
        "client_cpu_us_per_received_message": None if client_cpu is None else round(client_cpu * 1e6, 2),
        "delivered": received,
        "lost": signals * total - received,
        "disconnected": sum(s["closed"] for s in stats),
        "other_messages_received_in_signal_phase": sum(s["other_messages"] for s in stats) - settled_other,
        "connect_seconds": round(connect_seconds, 2),
        "connect_server_cpu_seconds": round(connect_cpu, 2),
        "connect_rate_per_s": connect_rate or None,
        "connect_node_cpu_percent": connect_node_cpu,
        "connect_load_generator_cpu_seconds": round(sum(o["cpu_seconds"] for o in opened_all), 2),
        "signal_phase_s": round(phase_seconds, 2),
        "node_cpu_signal_phase_percent": [
            round((b - a) / phase_seconds * 100, 1) for a, b in zip(each0, each1, strict=True)
        ],
        "load_generator_cpu_signal_phase_percent": [
            round(r["cpu_seconds"] / phase_seconds * 100, 1) for r in results
        ],
        "load_average_after_signal_phase": load_after,
        "total_seconds": round(time.monotonic() - started, 2),
        "targets": {
            "signal_fanout_p99_ms_max": FANOUT_P99_TARGET_MS,
            "server_rss_kb_per_connection_max": RSS_PER_CONNECTION_TARGET_KB,
            "met": fanout_p99 is not None
            and fanout_p99 < FANOUT_P99_TARGET_MS
            and per_connection["rss"] is not None
            and per_connection["rss"] < RSS_PER_CONNECTION_TARGET_KB,
        },
        "load_generator": {"workers": workers_count, "client": client, "compression": compression},
        "nodes": nodes,
        "node_timeout_s": node_timeout,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "server": {
            "loop": "uvloop " + (version("uvloop") or "(missing)"),
            "ws": "websockets-sansio",
            "uvicorn": version("uvicorn"),
            "websockets": version("websockets"),
            "log_level": server.log_level,
        },
        "machine": machine_description,
        "machine_during_signal_phase": machine_load,
    }
    if getattr(args, "per_signal", False):
        report["per_signal_fanout_ms"] = [_ms(ns) if ns >= 0 else None for ns in fanout_ns]
        report["per_signal_send_offset_ms"] = [_ms(ns - send_ns[0]) for ns in send_ns]
        report["heartbeat_rounds_offset_ms"] = [[_ms(a - send_ns[0]), _ms(b - send_ns[0])] for a, b in rounds]
    return report


def _per_message_us(cpu_seconds: float, messages: int) -> float | None:
    return round(cpu_seconds / messages * 1e6, 2) if messages else None


def _heartbeat_rounds(ping_ns: list[int], gap_ns: int = 500_000_000) -> list[tuple[int, int]]:
    """Group ping arrivals into rounds: (first arrival, last arrival) of each."""
    rounds: list[tuple[int, int]] = []
    for t in sorted(ping_ns):
        if rounds and t - rounds[-1][1] < gap_ns:
            rounds[-1] = (rounds[-1][0], t)
        else:
            rounds.append((t, t))
    return rounds
