"""``salon bench sfu``: forwarding cost, loss and delay of the real SFU, on this machine.

What runs where
---------------

* **The server** is the real ``python -m salon serve`` in a *separate process* on 127.0.0.1
  and a free port, with a fresh SQLite database in a temporary directory and a generated
  project (``SALON_API_KEY`` / ``SALON_API_SECRET`` in its environment only). ``--workers N``
  is passed through when ``salon serve`` has that option (media worker processes).
* **The load generator** is this process, on one uvloop event loop. It creates a session over
  the REST API, opens one signalling WebSocket per client and negotiates media exactly like a
  client does (``publish`` / ``subscribe`` requests carrying an SDP offer, the answer in the
  reply):

  - ``--publishers P`` publishers, each an aiortc ``RTCPeerConnection`` with one *track-less*
    sendonly VP8 transceiver. Nothing is encoded: the publisher injects synthetic,
    pre-built VP8-shaped RTP (below) straight into its DTLS transport's send path
    (``_tx_srtp.protect`` + ``sendto`` on the nominated ICE pair, falling back to
    ``RTCDtlsTransport._send_rtp``). A PLI/FIR from the SFU makes the next frame a key frame,
    as an encoder would.
  - ``--subscribers S`` subscriber clients, each subscribing to every publisher's stream with
    its own recvonly ``RTCPeerConnection`` (``P × S`` consumers in the server). Nothing is
    decoded: each subscription is a *sink* that counts packets through the raw
    ``RTCDtlsTransport._handle_rtp_data`` hook. Once DTLS is up the sink also takes SRTP
    datagrams straight from aioice's ``Connection.data_received`` and unprotects them there,
    skipping aiortc's per-packet queue and task wake-up, so that the load generator stays
    cheap and the arrival time is taken as early as possible.

* **Packet shape.** 1200-byte RTP packets (12-byte header, no extensions), 5 per frame, the
  marker bit on the last, a key frame every 60 frames. The payload starts with a valid VP8
  payload descriptor (S=1, PID=0 on a frame's first packet) and, on the first packet, a VP8
  payload header (P=0 plus the key-frame start code on key frames), so the SFU's key-frame
  detection and the subscribers' key-frame start work as with a real encoder. The last 16
  bytes carry the send time (``time.monotonic_ns()``, CLOCK_MONOTONIC is system-wide on Linux
  so it compares across processes), a per-publisher packet counter and the publisher index.
* **Burst pattern.** Real video leaves an encoder a frame at a time: all packets of a frame
  back to back, then nothing until the next frame. The publisher does the same: every
  ``5 / --rate`` seconds (120 frames/s at the default 600 packets/s) it sends one frame's 5
  packets in one burst, from absolute deadlines so the rate does not drift.

Measurement
-----------

1. Publishers connect; the server's memory (RSS of the server process and all its
   descendants) is read once idle. Subscribers connect; it is read again. The difference
   divided by the consumers created is the **memory per consumer** (it includes the
   subscriber's transport: ICE, DTLS, SRTP, socket).
2. Warm-up: publishing starts and runs until every sink has received packets (each sink
   starts on a key frame), then at least one more second.
3. The **window** (``--duration`` seconds): CPU (``utime + stime`` from ``/proc/PID/stat`` of
   the server and every descendant found through ``/proc/PID/task/*/children``, recursively,
   so media worker processes are included) and each publisher's packet counter are read at the
   start and at the end. After a short drain, every sink reports which counters of the window
   it received.

   * ``packets_in_per_second``: packets the publishers sent in the window / duration.
   * ``forwarded_per_second``: window packets received by the sinks / duration (what the
     server forwarded and the subscribers got; on loopback the two are the same unless
     something is lost).
   * ``cpu_us_per_forwarded_packet``: server-tree CPU in the window / forwarded packets.
     It includes everything the server did meanwhile: receiving, RTCP, timers, heartbeats.
   * ``loss``: for each sink, expected (window packets from the later of the window start
     and its first packet, i.e. excluding the start before its first key frame) minus
     distinct packets received.
   * ``delay_ms``: sink arrival minus embedded send time, p50/p99/max over window packets:
     the forwarding delay through the server, plus the load generator's own scheduling
     delay (so an upper bound).

The JSON report goes to stdout, progress to stderr; secrets are never printed. Every wait is
bounded, only 127.0.0.1 is used, and the server is stopped (SIGINT, then SIGTERM, then
SIGKILL) whatever happens.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import resource
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["run_sfu_bench"]

_SERVING = re.compile(r"salon serving on (http://127\.0\.0\.1:(\d+))")
_SERVER_START_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 60.0
_WARMUP_TIMEOUT = 20.0
_DRAIN = 0.5
_IDLE_SAMPLE = 3.0
_MAX_PUBLISHERS = 64
_MAX_SUBSCRIBERS = 256
_MAX_DURATION = 600.0

PACKET_SIZE = 1200
PACKETS_PER_FRAME = 5
KEY_FRAME_INTERVAL = 60
"""Frames between two key frames (a PLI/FIR from the SFU forces one sooner)."""
_CLOCK_RATE = 90000
_STAMP = struct.Struct("!QII")  # send time (ns, CLOCK_MONOTONIC), packet counter, publisher index
_HEADER = struct.Struct("!BBHII")


def _log(message: str) -> None:
    print(f"salon bench sfu: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark could not run (a broken run, not a slow one)."""


def run_sfu_bench(args: argparse.Namespace) -> int:
    """``salon bench sfu``: run the benchmark, print its JSON report, return the exit code.

    The exit code is 0 when the run completed and nothing was forwarded late enough to be
    counted lost; 1 on loss or when the run broke (the reason goes to stderr).
    """
    try:
        report = _bench(args)
    except BenchError as exc:
        _log(f"error: {exc}")
        return 1
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report["forwarded_per_second"] > 0 and report["loss"]["packets"] == 0 else 1


# -- /proc ------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, from ``/proc/PID/task/*/children`` (recursively)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as f:
                    pending.extend(int(child) for child in f.read().split())
    return found


def _tree_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` and all its live descendants (all threads), in seconds."""
    user = system = 0
    for process in _descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = pathlib.Path(f"/proc/{process}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # Fields 14 (utime) and 15 (stime) of proc(5); ``fields`` starts at field 3.
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def _tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and all its live descendants (all threads), in seconds."""
    return sum(_tree_cpu(pid))


def _tree_rss_kb(pid: int) -> tuple[int, int]:
    """(total RSS in kB, number of processes) of ``pid`` and its descendants."""
    total = 0
    processes = _descendants(pid)
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            for line in pathlib.Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total, len(processes)


# -- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiortc": _version("aiortc"),
        "pylibsrtp": _version("pylibsrtp"),
        "uvloop": _version("uvloop"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- the server process -----------------------------------------------------------------------


def _serve_has_workers_option() -> bool:
    """Whether this salon's ``serve`` takes ``--workers`` (media worker processes)."""
    from salon.cli.main import _parser

    parser = _parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        choices = getattr(action, "choices", None) or {}
        serve = choices.get("serve")
        if serve is not None:
            return any("--workers" in a.option_strings for a in serve._actions)
    return False


class _Server:
    """``python -m salon serve`` on 127.0.0.1 and a free port, with its own project."""

    def __init__(self, data_dir: pathlib.Path, workers: int | None) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.api_key = str(secrets.randbelow(90_000_000) + 10_000_000)
        self.api_secret = secrets.token_hex(24)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._log_path = data_dir / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("SALON_DATABASE_URL", None)
        env["SALON_API_KEY"] = self.api_key
        env["SALON_API_SECRET"] = self.api_secret
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "salon", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--data-dir", str(self.data_dir / "data"), "--log-level", "warning"]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + _SERVER_START_TIMEOUT
        buffer = b""
        while True:
            match = _SERVING.search(buffer.decode("utf-8", "replace"))
            if match:
                self.url = match.group(1)
                self.port = int(match.group(2))
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"the server did not start in {_SERVER_START_TIMEOUT:.0f} s{self.tail()}")
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    raise BenchError(f"the server exited ({self.proc.returncode}){self.tail()}")
                buffer += chunk
        # Keep reading its stdout so that the server never blocks on a full pipe.
        threading.Thread(target=self._discard, args=(fd,), name="salon-bench-sfu-drain", daemon=True).start()

    @staticmethod
    def _discard(fd: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            while os.read(fd, 65536):
                pass

    def tail(self) -> str:
        try:
            text = self._log_path.read_text("utf-8", "replace")[-2000:]
        except OSError:
            return ""
        text = text.replace(self.api_secret, "<secret>")
        return f"; its log ends with:\n{text}" if text.strip() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT (graceful shutdown), then SIGTERM, then SIGKILL; bounded."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if proc.stdout is not None:
            proc.stdout.close()

    def create_session(self) -> str:
        import httpx
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.api_key,
            "ist": "project",
            "iat": now,
            "exp": now + 180,
            "jti": str(uuid.uuid4()),
        }
        auth = jwt.encode(claims, self.api_secret, algorithm="HS256")
        response = httpx.post(
            f"{self.url}/session/create",
            headers={"X-OPENTOK-AUTH": auth, "Accept": "application/json"},
            data={"media_mode": "routed"},
            timeout=10,
        )
        if response.status_code != 200:
            raise BenchError(f"POST /session/create answered {response.status_code}: {response.text[:200]}")
        session_id: str = response.json()[0]["session_id"]
        return session_id

    def token(self, session_id: str) -> str:
        from salon.tokens import generate_token

        return generate_token(
            self.api_key, self.api_secret, session_id, role="publisher", expire_time=int(time.time()) + 3600
        )


# -- signalling -------------------------------------------------------------------------------


class _Signalling:
    """One signalling WebSocket: requests matched by ``request_id``, pings answered."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = iter(range(1, 1 << 30))
        self._waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._event = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def join(cls, port: int, session_id: str, token: str) -> _Signalling:
        import websockets

        ws = await websockets.connect(f"ws://127.0.0.1:{port}/signalling", max_size=None, compression=None)
        client = cls(ws)
        reply = await client.request({"type": "connect", "session_id": session_id, "token": token})
        if reply.get("type") != "connected":
            await client.close()
            raise BenchError(f"signalling connect failed: {reply}")
        return client

    async def _read(self) -> None:
        import websockets

        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await self.ws.send('{"type":"pong"}')
                    continue
                waiter = self._waiters.pop(message.get("request_id", -1), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
                else:
                    self._events.append(message)
                    self._event.set()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(BenchError("the server closed a signalling connection"))

    async def request(self, message: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        await self.ws.send(json.dumps({**message, "request_id": request_id}))
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise BenchError(f"no reply to {message['type']} in {timeout:.0f} s") from None

    async def event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self._events):
                if predicate(message):
                    return self._events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                raise BenchError("an expected signalling event did not arrive")
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


# -- media clients ----------------------------------------------------------------------------


def _peer_connection() -> Any:
    from aiortc import RTCConfiguration, RTCPeerConnection

    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


def _vp8_transceiver(pc: Any, direction: str) -> Any:
    from aiortc import RTCRtpSender

    transceiver = pc.addTransceiver("video", direction=direction)
    codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == "video/vp8"]
    transceiver.setCodecPreferences(codecs)
    return transceiver


async def _offer(pc: Any) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def _answer(pc: Any, sdp: str) -> None:
    from aiortc import RTCSessionDescription

    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


def _frame_payloads(key: bool) -> list[bytes]:
    """The payloads (without the 16-byte stamp) of one frame's packets."""
    body = PACKET_SIZE - 12 - _STAMP.size
    payloads = []
    for i in range(PACKETS_PER_FRAME):
        if i == 0:
            # VP8 payload descriptor S=1 PID=0, then the payload header: P=0 (key) or 1,
            # show_frame; a key frame carries the start code and a 640x480 size.
            start = bytes([0x10, 0x10 if key else 0x11, 0x00, 0x00])
            if key:
                start += b"\x9d\x01\x2a" + struct.pack("<HH", 640, 480)
        else:
            start = b"\x00"  # descriptor: continuation of the partition
        payloads.append(start + bytes((i * 7 + j) & 0xFF for j in range(body - len(start))))
    return payloads


class _Publisher:
    """A track-less sendonly aiortc peer injecting synthetic VP8-shaped RTP."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pc = _peer_connection()
        self.transceiver = _vp8_transceiver(self.pc, "sendonly")
        self.signalling: _Signalling | None = None
        self.stream_id = ""
        self.counter = 0
        self.sent = 0
        self.send_errors = 0
        self.key_requests = 0
        self._frame = 0
        self._force_key = True
        self._seq = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._key_payloads = _frame_payloads(True)
        self._delta_payloads = _frame_payloads(False)
        self._ssrc = 0
        self._first_byte = 0x80
        self._pt = 0
        self._tx: Any = None
        self._sendto: Any = None
        self._addr: Any = None
        self._pair: Any = None
        self._nominated: dict[int, Any] = {}
        self._dtls: Any = None

    async def publish(self, port: int, session_id: str, token: str) -> None:
        self.signalling = await _Signalling.join(port, session_id, token)
        reply = await self.signalling.request(
            {
                "type": "publish",
                "name": f"bench-{self.index}",
                "has_audio": False,
                "sdp": await _offer(self.pc),
            }
        )
        if reply.get("type") != "published" or not reply.get("answer"):
            raise BenchError(f"publish failed: {reply}")
        self.stream_id = reply["stream"]["stream_id"]
        await _answer(self.pc, reply["answer"])
        sender = self.transceiver.sender
        self._ssrc = sender._ssrc
        self._pt = self.transceiver._codecs[0].payloadType
        self._dtls = sender.transport
        self._nominated = self._dtls.transport._connection._nominated

        async def handle_rtcp(packet: Any) -> None:
            from aiortc.rtp import RtcpPsfbPacket

            # PLI (fmt 1) or FIR (fmt 4): the next frame is a key frame, as an encoder does.
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (1, 4):
                self.key_requests += 1
                self._force_key = True

        sender._handle_rtcp_packet = handle_rtcp

    @property
    def connected(self) -> bool:
        return self._dtls is not None and self._dtls.state == "connected"

    def send_frame(self) -> None:
        """Send one frame's packets back to back (a burst), stamped with time and counter."""
        key = self._force_key or self._frame % KEY_FRAME_INTERVAL == 0
        self._force_key = False
        self._frame += 1
        payloads = self._key_payloads if key else self._delta_payloads
        last = len(payloads) - 1
        timestamp = self._timestamp
        for i, payload in enumerate(payloads):
            packet = (
                _HEADER.pack(0x80, (0x80 if i == last else 0) | self._pt, self._seq, timestamp, self._ssrc)
                + payload
                + _STAMP.pack(time.monotonic_ns(), self.counter, self.index)
            )
            self._seq = (self._seq + 1) & 0xFFFF
            self.counter += 1
            self._send(packet)
        self._timestamp = (timestamp + _CLOCK_RATE // 30) & 0xFFFFFFFF

    def _send(self, packet: bytes) -> None:
        pair = self._nominated.get(1)
        if pair is not self._pair:
            self._pair = pair
            self._tx = self._dtls._tx_srtp
            self._sendto = None if pair is None else pair.protocol.transport.sendto
            self._addr = None if pair is None else pair.remote_addr
        if self._sendto is None or self._tx is None:
            self.send_errors += 1
            return
        try:
            self._sendto(self._tx.protect(packet), self._addr)
        except Exception:
            self.send_errors += 1
            return
        self.sent += 1

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 10)
        if self.signalling is not None:
            await self.signalling.close()


class _Sink:
    """One subscription: a recvonly aiortc peer that only counts what arrives (no decoding)."""

    def __init__(self, subscriber: int, publisher: int) -> None:
        self.subscriber = subscriber
        self.publisher = publisher
        self.pc = _peer_connection()
        self.transceiver = _vp8_transceiver(self.pc, "recvonly")
        self.counters = array.array("q")
        self.arrivals = array.array("q")
        self.wrong_publisher = 0
        self._dtls: Any = None

    async def subscribe(self, signalling: _Signalling, stream_id: str) -> None:
        reply = await signalling.request(
            {
                "type": "subscribe",
                "stream_id": stream_id,
                "audio": False,
                "video": True,
                "sdp": await _offer(self.pc),
            }
        )
        if reply.get("type") != "subscribed" or not reply.get("answer"):
            raise BenchError(f"subscribe failed: {reply}")
        # Hook before the answer starts ICE/DTLS, so no packet goes past us.
        dtls = self.transceiver.receiver.transport
        self._dtls = dtls

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            self.on_rtp(data)

        dtls._handle_rtp_data = handle_rtp_data
        connection = dtls.transport._connection
        queue_datagram = connection.data_received
        on_rtp = self.on_rtp

        def datagram_received(data: bytes, component: int) -> None:
            # Once DTLS is up, unprotect SRTP here: no aiortc queue and task per packet.
            rx = dtls._rx_srtp
            if rx is not None and 127 < data[0] < 192 and not 192 <= data[1] <= 223:
                with contextlib.suppress(Exception):
                    on_rtp(rx.unprotect(data))
                return
            queue_datagram(data, component)

        connection.data_received = datagram_received
        await _answer(self.pc, reply["answer"])

    def on_rtp(self, data: bytes) -> None:
        arrived = time.monotonic_ns()
        if len(data) < PACKET_SIZE:
            return
        sent, counter, publisher = _STAMP.unpack_from(data, len(data) - _STAMP.size)
        if publisher != self.publisher:
            self.wrong_publisher += 1
            return
        self.counters.append(counter)
        self.arrivals.append(arrived - sent)

    @property
    def connected(self) -> bool:
        return self._dtls is not None and self._dtls.state == "connected"

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 10)


# -- the run ----------------------------------------------------------------------------------


async def _wait(predicate: Callable[[], bool], timeout: float, what: str, server: _Server) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not server.alive():
            raise BenchError(f"the server died while waiting for {what}{server.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _settle(server: _Server, seconds: float = 1.0) -> None:
    """Wait until the server tree has been nearly idle for a moment (bounded)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        before = _tree_cpu_seconds(server.pid)
        await asyncio.sleep(seconds / 2)
        if _tree_cpu_seconds(server.pid) - before < 0.05 * seconds:
            return


class _Pacer:
    """Sends a frame per publisher at absolute deadlines (frame rate = rate / packets per frame)."""

    def __init__(self, publishers: list[_Publisher], rate: float) -> None:
        self.publishers = publishers
        self.interval = PACKETS_PER_FRAME / rate
        self.late_frames = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="salon-bench-pacer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        # Spread the publishers over the frame interval, as independent encoders would be.
        offsets = [i * self.interval / len(self.publishers) for i in range(len(self.publishers))]
        while True:
            for publisher, offset in zip(self.publishers, offsets, strict=True):
                delay = next_at + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                publisher.send_frame()
            next_at += self.interval
            if loop.time() - next_at > self.interval:
                # Fell behind by more than a frame: skip ahead instead of bursting to catch up.
                skipped = int((loop.time() - next_at) / self.interval)
                self.late_frames += skipped
                next_at += skipped * self.interval

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _run(args: argparse.Namespace, server: _Server) -> dict[str, Any]:
    from salon.media.loopback import host_addresses

    session_id = await asyncio.to_thread(server.create_session)
    publishers = [_Publisher(i) for i in range(args.publishers)]
    subscribers: list[_Signalling] = []
    sinks: list[_Sink] = []
    pacer = _Pacer(publishers, args.rate)
    try:
        with host_addresses(["127.0.0.1"]):
            _log(f"publishing {args.publishers} stream(s)")
            for publisher in publishers:
                await publisher.publish(server.port, session_id, server.token(session_id))
            await _wait(
                lambda: all(p.connected for p in publishers),
                _CONNECT_TIMEOUT,
                "publishers to connect",
                server,
            )
            await _settle(server)
            rss_before, _ = _tree_rss_kb(server.pid)

            _log(f"subscribing {args.subscribers} client(s) to each stream")
            for s in range(args.subscribers):
                signalling = await _Signalling.join(server.port, session_id, server.token(session_id))
                subscribers.append(signalling)
                for publisher in publishers:
                    sink = _Sink(s, publisher.index)
                    sinks.append(sink)
                    await sink.subscribe(signalling, publisher.stream_id)
            await _wait(
                lambda: all(k.connected for k in sinks), _CONNECT_TIMEOUT, "subscribers to connect", server
            )
            await _settle(server)
            rss_after, processes = _tree_rss_kb(server.pid)
            # What the server tree costs with everyone connected and no media (timers,
            # heartbeats, ICE consent checks): the floor under the per-packet figure.
            idle0 = _tree_cpu_seconds(server.pid)
            idle_t0 = time.monotonic()
            await asyncio.sleep(_IDLE_SAMPLE)
            idle_rate = (_tree_cpu_seconds(server.pid) - idle0) / (time.monotonic() - idle_t0)

            _log(f"warming up at {args.rate:g} packets/s per publisher")
            pacer.start()
            await _wait(
                lambda: all(k.counters for k in sinks), _WARMUP_TIMEOUT, "every sink to start", server
            )
            await asyncio.sleep(1.0)

            _log(f"measuring for {args.duration:g} s")
            own_cpu0 = time.process_time()
            start_counters = [p.counter for p in publishers]
            start_marks = [len(k.counters) for k in sinks]
            user0, sys0 = _tree_cpu(server.pid)
            t0 = time.monotonic()
            await asyncio.sleep(args.duration)
            user1, sys1 = _tree_cpu(server.pid)
            t1 = time.monotonic()
            end_counters = [p.counter for p in publishers]
            own_cpu1 = time.process_time()
            await asyncio.sleep(_DRAIN)  # the last packets of the window reach the sinks
            await pacer.stop()
            if not server.alive():
                raise BenchError(f"the server died during the run{server.tail()}")
    finally:
        await pacer.stop()
        await asyncio.gather(*(k.close() for k in sinks), return_exceptions=True)
        await asyncio.gather(*(p.close() for p in publishers), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)

    elapsed = t1 - t0
    sent = sum(e - s for s, e in zip(start_counters, end_counters, strict=True))
    forwarded = 0
    expected = 0
    delays: list[int] = []
    late_start = 0
    for sink, mark in zip(sinks, start_marks, strict=True):
        c0 = start_counters[sink.publisher]
        c1 = end_counters[sink.publisher]
        counters = sink.counters
        first = min(counters) if counters else c1
        start = max(c0, first)
        if first > c0:
            late_start += 1
        seen: set[int] = set()
        for i in range(len(counters)):
            counter = counters[i]
            if start <= counter < c1 and counter not in seen:
                seen.add(counter)
                if i >= mark:
                    delays.append(sink.arrivals[i])
        forwarded += len(seen)
        expected += max(0, c1 - start)
    user = user1 - user0
    system = sys1 - sys0
    cpu = user + system
    consumers = len(sinks)
    loss = expected - forwarded

    def ms(q: float) -> float | None:
        value = _percentile(delays, q)
        return None if value is None else round(value / 1e6, 3)

    return {
        "benchmark": "sfu",
        "parameters": {
            "publishers": args.publishers,
            "subscribers": args.subscribers,
            "consumers": consumers,
            "duration": args.duration,
            "rate_per_publisher": args.rate,
            "workers": server.workers,
            "packet_size": PACKET_SIZE,
            "packets_per_frame": PACKETS_PER_FRAME,
            "key_frame_interval": KEY_FRAME_INTERVAL,
            "burst": "one frame's packets back to back, every packets_per_frame/rate seconds",
        },
        "machine": _machine(),
        "elapsed": round(elapsed, 3),
        "packets_in_per_second": round(sent / elapsed, 1),
        "forwarded_per_second": round(forwarded / elapsed, 1),
        "cpu_us_per_forwarded_packet": round(cpu / forwarded * 1e6, 2) if forwarded else None,
        "cpu_us_per_forwarded_packet_above_idle": (
            round(max(0.0, cpu - idle_rate * elapsed) / forwarded * 1e6, 2) if forwarded else None
        ),
        "server_cpu": {
            "seconds": round(cpu, 3),
            "user_seconds": round(user, 3),
            "system_seconds": round(system, 3),
            "utilisation": round(cpu / elapsed, 3),
            "idle_utilisation": round(idle_rate, 4),
            "processes": processes,
        },
        "loss": {
            "packets": loss,
            "ratio": round(loss / expected, 6) if expected else None,
            "expected": expected,
            "sinks_started_in_window": late_start,
        },
        "delay_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0), "samples": len(delays)},
        "memory": {
            "rss_before_subscribing_kb": rss_before,
            "rss_after_subscribing_kb": rss_after,
            "rss_per_consumer_kb": round((rss_after - rss_before) / consumers, 1) if consumers else None,
        },
        "load_generator": {
            "cpu_utilisation": round((own_cpu1 - own_cpu0) / elapsed, 3),
            "late_frames": pacer.late_frames,
            "send_errors": sum(p.send_errors for p in publishers),
            "key_frame_requests": sum(p.key_requests for p in publishers),
        },
    }


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.publishers <= _MAX_PUBLISHERS:
        raise BenchError(f"--publishers must be 1..{_MAX_PUBLISHERS}")
    if not 1 <= args.subscribers <= _MAX_SUBSCRIBERS:
        raise BenchError(f"--subscribers must be 1..{_MAX_SUBSCRIBERS}")
    if not 0 < args.duration <= _MAX_DURATION:
        raise BenchError(f"--duration must be in (0, {_MAX_DURATION:.0f}] seconds")
    if not 5 <= args.rate <= 20000:
        raise BenchError("--rate must be 5..20000 packets/s per publisher")
    workers = args.workers
    if workers is not None and not _serve_has_workers_option():
        _log("this salon serve has no --workers option: running without it")
        workers = None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    with tempfile.TemporaryDirectory(prefix="salon-bench-sfu-") as tmp:
        server = _Server(pathlib.Path(tmp), workers)
        try:
            server.start()
            _log(f"server pid {server.pid} on {server.url}")
            with _event_loop() as runner:
                report: dict[str, Any] = runner.run(asyncio.wait_for(_run(args, server), _time_limit(args)))
                return report
        except TimeoutError:
            raise BenchError("the run exceeded its time limit") from None
        finally:
            server.stop()


def _time_limit(args: argparse.Namespace) -> float:
    setup = 30.0 + 0.5 * int(args.publishers) * (int(args.subscribers) + 1)
    return setup + _CONNECT_TIMEOUT + _WARMUP_TIMEOUT + float(args.duration) + 30.0


@contextlib.contextmanager
def _event_loop() -> Iterator[asyncio.Runner]:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner
