"""``salon bench sfu``: forwarding cost, loss and delay of the real SFU, on this machine.

What runs where
---------------

* **The server** is the real ``python -m salon serve`` in a *separate process* on 127.0.0.1
  and a free port, with a fresh SQLite database in a temporary directory and a generated
  project (``SALON_API_KEY`` / ``SALON_API_SECRET`` in its environment only). ``--workers N``
  is passed through when ``salon serve`` has that option (media worker processes).
* **The load generator** runs in child processes (``multiprocessing`` *spawn*), each on its
  own uvloop event loop, driven by this process over pipes: one publisher process per 8
  publishers and ``--sink-processes`` sink processes (default: min(subscribers, 4)), the
  subscribers dealt round-robin among them. A single loop serving the publishers and every sink
  both saturated before the server did and added its own scheduling to the measured delay.
  Each process creates its clients over the REST session this process made, opens one
  signalling WebSocket per client and negotiates media exactly like a client does
  (``publish`` / ``subscribe`` requests carrying an SDP offer, the answer in the reply):

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
  - ``--transport-cc``: each sink's SDP also carries the transport-wide sequence-number
    extension and ``transport-cc`` feedback (added to the offer to salon; in the answer to
    Janus, with the ID Janus offered), so the server numbers every packet it forwards; the
    sinks send no feedback. Each sink counts packets that arrive without the extension
    (``unstamped_packets`` in the report).

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
3. The **window** (``--duration`` seconds): CPU (``utime + stime`` from ``/proc/PID/stat``) of
   the server's main process and, separately, of its descendants (found through
   ``/proc/PID/task/*/children``: the media worker processes, which do all the forwarding),
   and each publisher's packet counter are read at the start and at the end. After a short
   drain, every sink process reports, per sink, which counters of the window it received.

   * ``packets_in_per_second``: packets the publishers sent in the window / duration.
   * ``forwarded_per_second``: window packets received by the sinks / duration.
   * ``worker_cpu_us_per_forwarded_packet`` (the headline): media-worker CPU in the window /
     forwarded packets; everything the workers did meanwhile is in it (receiving, RTCP,
     timers, ICE consent). ``main_cpu_us_per_forwarded_packet`` is the main process
     (signalling, REST; it forwards nothing) and ``cpu_us_per_forwarded_packet`` the sum.
   * ``loss``: for each sink, expected (window packets from the later of the window start
     and its first packet ever, i.e. excluding the start before its first key frame) minus
     distinct packets received.
   * ``delay_ms``: sink arrival minus the send time embedded in the packet, p50/p99/max over
     window packets: the forwarding delay through the server plus the sink process's own
     scheduling (an upper bound of the server's share).

4. With ``--saturate``: after the window, the rate is stepped up x1.5 per step (4 s windows,
   at most 120 s) until a step loses more than 0.1 % of its packets (saturation), or the
   publishers send less than 90 % of the asked rate (``limited_by_load_generator``: this
   machine, not the server, is full); then one window at half the last clean rate gives
   the delay at half load. Every step is in the report (``saturation``).

The JSON report goes to stdout, progress to stderr; secrets are never printed. Every wait is
bounded, only 127.0.0.1 is used, and the server is stopped (SIGINT, then SIGTERM, then
SIGKILL) whatever happens.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import resource
import secrets
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from salon.bench._harness import (
    BenchError,
    ServerProcess,
    descendants,
    machine,
    machine_line,
    percentile,
    process_cpu,
    process_rss_kb,
    process_schedule,
    run_and_report,
)
from salon.cli.bench_options import DEFAULT_SINK_PROCESSES

__all__ = ["run_sfu_bench"]

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


class _Watched(Protocol):
    """The server under test, as the rig watches it (a salon ServerProcess, or Janus)."""

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def tail(self) -> str: ...


def run_sfu_bench(args: argparse.Namespace) -> int:
    """``salon bench sfu``: run the benchmark, print its JSON report, return the exit code.

    The exit code is 0 when the run completed and nothing was forwarded late enough to be
    counted lost; 1 on loss or when the run broke (the reason goes to stderr).
    """
    if getattr(args, "peer", None) == "janus":
        from salon.bench.janus import run_side_by_side

        return run_side_by_side(args)
    return run_and_report(
        "sfu",
        lambda: _bench(args),
        lambda report: all(
            r["forwarded_per_second"] > 0 and r["loss"]["packets"] == 0
            for r in ([report["one_worker"], report["two_workers"]] if "comparison" in report else [report])
        ),
    )


# -- /proc ------------------------------------------------------------------------------------


def _tree_cpu(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` and all its live descendants (all threads), in seconds."""
    user = system = 0.0
    for process in descendants(pid):
        u, s = process_cpu(process)
        user += u
        system += s
    return user, system


def _tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and all its live descendants (all threads), in seconds."""
    return sum(_tree_cpu(pid))


def _tree_rss_kb(pid: int) -> tuple[int, int]:
    """(total RSS in kB, number of processes) of ``pid`` and its descendants."""
    processes = descendants(pid)
    return sum(process_rss_kb(process) for process in processes), len(processes)


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


EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
"""The transport-wide sequence-number extension (``--transport-cc``)."""


def _with_transport_cc(sdp: str, ext_id: int | None = None) -> str:
    """``sdp`` (an aiortc sink's offer, or its answer to Janus) with the transport-wide
    sequence-number extension and ``transport-cc`` feedback added to its video section, so
    that the server stamps every packet it sends this sink (``--transport-cc``). aiortc cannot
    negotiate it itself; the sink only counts packets and sends no feedback. ``ext_id``: the
    ID to use (the one Janus offered); by default the lowest one the section does not use."""
    lines = sdp.split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    section = lines[start:end]
    if any(EXT_TRANSPORT_CC in line for line in section):
        return sdp
    used = {_extmap_id(line) for line in section if line.startswith("a=extmap:")}
    if ext_id is None:
        ext_id = min(set(range(1, 15)) - used)
    added = [f"a=extmap:{ext_id} {EXT_TRANSPORT_CC}"]
    added += [f"a=rtcp-fb:{pt} transport-cc" for pt in section[0].split()[3:]]
    # After the section's last attribute (an SDP's lines end with an empty string after CRLF).
    at = end if end < len(lines) else len(lines) - (1 if lines[-1] == "" else 0)
    return "\r\n".join(lines[:at] + added + lines[at:])


def _offered_transport_cc(sdp: str) -> int | None:
    """The ID of the transport-wide sequence-number extension in Janus's offer, if any."""
    for line in sdp.split("\r\n"):
        if line.startswith("a=extmap:") and EXT_TRANSPORT_CC in line:
            return _extmap_id(line)
    return None


def _has_one_byte_extension(packet: bytes, ext_id: int) -> bool:
    """Whether an RTP packet carries one-byte header extension ``ext_id`` (RFC 8285)."""
    if not packet[0] & 0x10:
        return False
    at = 12 + 4 * (packet[0] & 0x0F)
    if packet[at : at + 2] != b"\xbe\xde":
        return False
    end = at + 4 + 4 * int.from_bytes(packet[at + 2 : at + 4], "big")
    at += 4
    while at < end:
        byte = packet[at]
        if byte == 0:  # padding
            at += 1
            continue
        if byte >> 4 == 15:
            return False
        if byte >> 4 == ext_id:
            return True
        at += 2 + (byte & 0x0F)
    return False


def _extmap_id(line: str) -> int:
    """The ID of an ``a=extmap:<id>[/<direction>] <uri>`` line."""
    return int(line.split()[0].split(":")[1].split("/")[0])


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
        self.janus: Any = None
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
        self._hook()

    async def publish_janus(self, url: str, room: int) -> None:
        """Publish into a Janus VideoRoom instead (``salon bench sfu --peer janus``)."""
        from salon.bench.janus import JanusClient

        client = JanusClient(url)
        await client.attach()
        self.janus = client
        data, jsep = await client.message(
            {
                "request": "joinandconfigure",
                "room": room,
                "ptype": "publisher",
                "display": f"bench-{self.index}",
            },
            {"type": "offer", "sdp": await _offer(self.pc)},
        )
        if data.get("videoroom") != "joined" or not jsep or jsep.get("type") != "answer":
            raise BenchError(f"Janus publisher join failed: {data}")
        self.stream_id = str(data["id"])
        await _answer(self.pc, jsep["sdp"])
        self._hook()

    def _hook(self) -> None:
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
        if self.janus is not None:
            await self.janus.close()


class _Sink:
    """One subscription: a recvonly aiortc peer that only counts what arrives (no decoding)."""

    def __init__(
        self, subscriber: int, publisher: int, *, offerer: bool = True, transport_cc: bool = False
    ) -> None:
        self.subscriber = subscriber
        self.transport_cc = transport_cc
        """Negotiate the transport-wide sequence number (``--transport-cc``)."""
        self.publisher = publisher
        self.pc = _peer_connection()
        # Janus offers to its subscribers: the transceiver then comes from its offer.
        self.transceiver = _vp8_transceiver(self.pc, "recvonly") if offerer else None
        self.janus: Any = None
        self.counters = array.array("q")
        self.arrivals = array.array("q")
        self.wrong_publisher = 0
        self.unstamped = 0
        """``--transport-cc``: packets that arrived without a transport-wide sequence number."""
        self._twcc_id = 0
        self.first = -1
        """The first counter this sink ever received (it starts on a key frame)."""
        self._dtls: Any = None

    async def subscribe(self, signalling: _Signalling, stream_id: str) -> None:
        offer = await _offer(self.pc)
        if self.transport_cc:
            offer = _with_transport_cc(offer)
            self._twcc_id = _offered_transport_cc(offer) or 0
        message = self._subscribe_message(stream_id, offer)
        deadline = time.monotonic() + _CONNECT_TIMEOUT
        while True:
            reply = await signalling.request(message)
            # not_found: the stream is still pending (announced once its first packet arrived).
            if reply.get("code") != "not_found" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if reply.get("type") != "subscribed" or not reply.get("answer"):
            raise BenchError(f"subscribe failed: {reply}")
        assert self.transceiver is not None
        # Hook before the answer starts ICE/DTLS, so no packet goes past us.
        self._hook(self.transceiver.receiver.transport)
        await _answer(self.pc, reply["answer"])

    def _subscribe_message(self, stream_id: str, offer: str) -> dict[str, Any]:
        """The ``subscribe`` request :meth:`subscribe` sends (retried while the stream is pending)."""
        return {"type": "subscribe", "stream_id": stream_id, "audio": False, "video": True, "sdp": offer}

    async def subscribe_janus(self, url: str, room: int, feed: str) -> None:
        """Subscribe to a Janus VideoRoom feed: Janus offers, the sink answers."""
        from aiortc import RTCSessionDescription

        from salon.bench.janus import JanusClient

        client = JanusClient(url)
        await client.attach()
        self.janus = client
        data, jsep = await client.message(
            {"request": "join", "room": room, "ptype": "subscriber", "streams": [{"feed": int(feed)}]}
        )
        if data.get("videoroom") != "attached" or not jsep or jsep.get("type") != "offer":
            raise BenchError(f"Janus subscriber join failed: {data}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        self.transceiver = self.pc.getTransceivers()[0]
        # Hook before the answer starts ICE/DTLS, so no packet goes past us.
        self._hook(self.transceiver.receiver.transport)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription.sdp
        if self.transport_cc:
            ext_id = _offered_transport_cc(jsep["sdp"])
            if ext_id is None:
                raise BenchError("Janus offered no transport-wide sequence number (--transport-cc)")
            answer = _with_transport_cc(answer, ext_id)
            self._twcc_id = ext_id
        data, _ = await client.message({"request": "start", "room": room}, {"type": "answer", "sdp": answer})
        if data.get("started") != "ok":
            raise BenchError(f"Janus subscriber start failed: {data}")

    def _hook(self, dtls: Any) -> None:
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

    def on_rtp(self, data: bytes) -> None:
        arrived = time.monotonic_ns()
        if len(data) < PACKET_SIZE:
            return
        sent, counter, publisher = _STAMP.unpack_from(data, len(data) - _STAMP.size)
        if publisher != self.publisher:
            self.wrong_publisher += 1
            return
        if self.first < 0:
            self.first = counter
        if self._twcc_id and not _has_one_byte_extension(data, self._twcc_id):
            self.unstamped += 1
        self.counters.append(counter)
        self.arrivals.append(arrived - sent)

    @property
    def connected(self) -> bool:
        return self._dtls is not None and self._dtls.state == "connected"

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 10)
        if self.janus is not None:
            await self.janus.close()


# -- load-generator processes -----------------------------------------------------------------
#
# Publishers and sinks run in child processes (multiprocessing *spawn*: fresh interpreters),
# each on its own uvloop loop, driven by the bench process over a pipe with small
# ``(command, kwargs)`` requests. One process can then neither delay the publishers' pacing
# with sink work (which inflated the delay p99) nor saturate before the server does.


class _LoadProcess:
    """The bench's handle on one load-generator process (requests are bounded in time)."""

    def __init__(self, context: Any, role: str, name: str, ice_address: str = "127.0.0.1") -> None:
        self.role = role
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_child_main, args=(child, role, ice_address), name=name, daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def send(self, command: str, **kwargs: Any) -> None:
        self.conn.send((command, kwargs))

    def reply(self, timeout: float, server: _Watched | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.process.is_alive():
                raise BenchError(f"a {self.role} load process died (exit code {self.process.exitcode})")
            if server is not None and not server.alive():
                raise BenchError(f"the server died{server.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"a {self.role} load process did not answer in {timeout:.0f} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise BenchError(f"{self.role} load process: {value}")
        return value

    def request(self, command: str, timeout: float, server: _Watched | None = None, **kwargs: Any) -> Any:
        self.send(command, **kwargs)
        return self.reply(timeout, server)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send("close")
            self.reply(15.0)
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


def _all(
    processes: Sequence[_LoadProcess], command: str, timeout: float, server: _Watched, **kwargs: Any
) -> list[Any]:
    """The same request to several processes at once (they work in parallel)."""
    for process in processes:
        process.send(command, **kwargs)
    return [process.reply(timeout, server) for process in processes]


def _child_main(conn: multiprocessing.connection.Connection, role: str, ice_address: str) -> None:
    """Entry point of a load-generator process: serve requests until ``close``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench process decides when to stop
    with _event_loop() as runner:
        runner.run(_child(conn, role, ice_address))


async def _child(conn: multiprocessing.connection.Connection, role: str, ice_address: str) -> None:
    from salon.media.loopback import host_addresses

    publishers: list[_Publisher] = []
    signallings: list[_Signalling] = []
    sinks: list[_Sink] = []
    pacer: _Pacer | None = None

    async def publish(indexes: list[int], port: int, session_id: str, token: str) -> dict[int, str]:
        for index in indexes:
            publisher = _Publisher(index)
            publishers.append(publisher)
            await publisher.publish(port, session_id, token)
        await _wait_local(lambda: all(p.connected for p in publishers), _CONNECT_TIMEOUT, "publishers")
        for publisher in publishers:
            publisher.send_frame()  # a stream is announced (subscribable) on its first packet
        return {p.index: p.stream_id for p in publishers}

    async def subscribe(
        subscribers: list[int],
        streams: list[tuple[int, str]],
        port: int,
        session_id: str,
        token: str,
        transport_cc: bool = False,
    ) -> int:
        for s in subscribers:
            signalling = await _Signalling.join(port, session_id, token)
            signallings.append(signalling)
            for index, stream_id in streams:
                sink = _Sink(s, index, transport_cc=transport_cc)
                sinks.append(sink)
                await sink.subscribe(signalling, stream_id)
        await _wait_local(lambda: all(k.connected for k in sinks), _CONNECT_TIMEOUT, "subscribers")
        return len(sinks)

    async def publish_janus(indexes: list[int], url: str, room: int) -> dict[int, str]:
        for index in indexes:
            publisher = _Publisher(index)
            publishers.append(publisher)
            await publisher.publish_janus(url, room)
        await _wait_local(lambda: all(p.connected for p in publishers), _CONNECT_TIMEOUT, "publishers")
        for publisher in publishers:
            publisher.send_frame()
        return {p.index: p.stream_id for p in publishers}

    async def subscribe_janus(
        subscribers: list[int],
        streams: list[tuple[int, str]],
        url: str,
        room: int,
        transport_cc: bool = False,
    ) -> int:
        for s in subscribers:
            for index, feed in streams:
                sink = _Sink(s, index, offerer=False, transport_cc=transport_cc)
                sinks.append(sink)
                await sink.subscribe_janus(url, room, feed)
        await _wait_local(lambda: all(k.connected for k in sinks), _CONNECT_TIMEOUT, "subscribers")
        return len(sinks)

    async def start(rate: float) -> None:
        nonlocal pacer
        if pacer is not None:
            await pacer.stop()
        pacer = _Pacer(publishers, rate)
        pacer.start()

    async def counters() -> dict[str, Any]:
        return {
            "counters": {p.index: p.counter for p in publishers},
            "late_frames": pacer.late_frames if pacer else 0,
            "send_errors": sum(p.send_errors for p in publishers),
            "key_frame_requests": sum(p.key_requests for p in publishers),
        }

    async def started() -> bool:
        return all(k.first >= 0 for k in sinks)

    async def collect(c0: dict[int, int], c1: dict[int, int], split: int | None = None) -> dict[str, Any]:
        """Window figures per sink; arrays are cleared so the next window starts empty.
        ``split``: also the delays of the subscribers below it and of the others, apart."""
        expected = forwarded = late = 0
        delays = array.array("q")
        halves = (array.array("q"), array.array("q"))
        earliest: tuple[dict[int, int], dict[int, int]] = ({}, {})
        """Per half, each window packet's earliest arrival (its least delay) at any sink."""
        for sink in sinks:
            mark = len(delays)
            first_of = earliest[split is not None and sink.subscriber >= split]
            start0, end = c0[sink.publisher], c1[sink.publisher]
            first = sink.first if sink.first >= 0 else end
            begin = max(start0, first)
            late += first > start0
            seen: set[int] = set()
            counters_, arrivals = sink.counters, sink.arrivals
            for i in range(len(counters_)):
                counter = counters_[i]
                if begin <= counter < end and counter not in seen:
                    seen.add(counter)
                    delays.append(arrivals[i])
                    if split is not None and arrivals[i] < first_of.get(counter, 1 << 62):
                        first_of[counter] = arrivals[i]
            forwarded += len(seen)
            expected += max(0, end - begin)
            if split is not None:
                halves[sink.subscriber >= split].extend(delays[mark:])
            # Keep what arrived after the window (it belongs to the next one, if any).
            keep = [i for i in range(len(counters_)) if counters_[i] >= end]
            sink.counters = array.array("q", (counters_[i] for i in keep))
            sink.arrivals = array.array("q", (arrivals[i] for i in keep))
        return {
            "expected": expected,
            "forwarded": forwarded,
            "late_start": late,
            "wrong_publisher": sum(k.wrong_publisher for k in sinks),
            "unstamped": sum(k.unstamped for k in sinks),
            "delays": delays.tobytes(),
            "halves": [h.tobytes() for h in halves],
            "earliest": [
                (array.array("q", e.keys()).tobytes(), array.array("q", e.values()).tobytes())
                for e in earliest
            ],
        }

    async def stop() -> None:
        if pacer is not None:
            await pacer.stop()

    async def close() -> None:
        await stop()
        await asyncio.gather(*(k.close() for k in sinks), return_exceptions=True)
        await asyncio.gather(*(p.close() for p in publishers), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in signallings), return_exceptions=True)

    handlers: dict[str, Callable[..., Any]] = {
        "publish": publish,
        "subscribe": subscribe,
        "publish_janus": publish_janus,
        "subscribe_janus": subscribe_janus,
        "start": start,
        "counters": counters,
        "started": started,
        "collect": collect,
        "stop": stop,
        "close": close,
    }
    with host_addresses([ice_address]):
        while True:
            try:
                command, kwargs = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):
                await close()
                return
            try:
                result = await handlers[command](**kwargs)
            except Exception as exc:  # reported to the bench process, which fails the run
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            else:
                conn.send(("ok", result))
            if command == "close":
                return


async def _wait_local(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what} to connect")
        await asyncio.sleep(0.05)


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
            self._task = None


# -- the run ----------------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float, what: str, server: _Watched) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not server.alive():
            raise BenchError(f"the server died while waiting for {what}{server.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _settle(server: _Watched, seconds: float = 1.0) -> None:
    """Wait until the server tree has been nearly idle for a moment (bounded)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        before = _tree_cpu_seconds(server.pid)
        time.sleep(seconds / 2)
        if _tree_cpu_seconds(server.pid) - before < 0.05 * seconds:
            return


class _CpuSplit:
    """CPU seconds of the server's main process and of its media workers (its descendants).

    ``single_process``: the server forwards in its one process (Janus), which then counts as
    the worker, and the main process as nothing.
    """

    def __init__(self, server_pid: int, loaders: Sequence[int], *, single_process: bool = False) -> None:
        if single_process:
            self.main = 0.0
            self.per_worker = {server_pid: sum(process_cpu(server_pid))}
        else:
            self.main = sum(process_cpu(server_pid))
            self.per_worker = {
                pid: sum(process_cpu(pid)) for pid in descendants(server_pid) if pid != server_pid
            }
        self.workers = sum(self.per_worker.values())
        self.worker_user = self.worker_system = 0.0
        for pid in self.per_worker:
            user, system = process_cpu(pid)
            self.worker_user += user
            self.worker_system += system
        #: The workers' time on a CPU in the scheduler's nanosecond accounting, and their
        #: voluntary (sleeping in the event loop) and involuntary (preempted) switches.
        self.worker_run = 0.0
        self.worker_voluntary = self.worker_involuntary = 0
        for pid in self.per_worker:
            run, voluntary, involuntary = process_schedule(pid)
            self.worker_run += run
            self.worker_voluntary += voluntary
            self.worker_involuntary += involuntary
        self.loaders = sum(sum(process_cpu(pid)) for pid in loaders)
        self.at = time.monotonic()


class _Rig:
    """The connected load: publisher and sink processes, and the server they talk to.

    ``server`` is a salon :class:`ServerProcess`, or a Janus process (``janus``: its HTTP API
    URL and VideoRoom room, for ``--peer janus``); the clients gather ICE candidates on
    ``ice_address``.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        server: _Watched,
        *,
        ice_address: str = "127.0.0.1",
        janus: tuple[str, int] | None = None,
        split: int | None = None,
    ) -> None:
        self.args = args
        self.server = server
        self.split = split
        """``--spread``: the subscribers below this index subscribe first, the others after."""
        self.ice_address = ice_address
        self.janus = janus
        self.publisher_procs: list[_LoadProcess] = []
        self.sink_procs: list[_LoadProcess] = []
        self.session_id = ""

    @property
    def loader_pids(self) -> list[int]:
        return [p.pid for p in self.publisher_procs + self.sink_procs]

    def _cpu(self, loaders: Sequence[int]) -> _CpuSplit:
        return _CpuSplit(self.server.pid, loaders, single_process=self.janus is not None)

    def _publish(self, group: list[int]) -> tuple[str, dict[str, Any]]:
        if self.janus is not None:
            url, room = self.janus
            return "publish_janus", {"indexes": group, "url": url, "room": room}
        assert isinstance(self.server, ServerProcess)
        return "publish", {
            "indexes": group,
            "port": self.server.port,
            "session_id": self.session_id,
            "token": self.server.token(self.session_id),
        }

    def _subscribe(self, group: list[int], streams: list[tuple[int, str]]) -> tuple[str, dict[str, Any]]:
        transport_cc = bool(getattr(self.args, "transport_cc", False))
        if self.janus is not None:
            url, room = self.janus
            return "subscribe_janus", {
                "subscribers": group,
                "streams": streams,
                "url": url,
                "room": room,
                "transport_cc": transport_cc,
            }
        assert isinstance(self.server, ServerProcess)
        return "subscribe", {
            "subscribers": group,
            "streams": streams,
            "port": self.server.port,
            "session_id": self.session_id,
            "token": self.server.token(self.session_id),
            "transport_cc": transport_cc,
        }

    def connect(self) -> dict[str, Any]:
        args, server = self.args, self.server
        context = multiprocessing.get_context("spawn")
        if isinstance(server, ServerProcess):
            self.session_id = server.create_session()
        publisher_groups = _split(list(range(args.publishers)), max(1, math.ceil(args.publishers / 8)))
        sink_processes = args.sink_processes or min(args.subscribers, DEFAULT_SINK_PROCESSES)
        subscriber_groups = _split(list(range(args.subscribers)), min(sink_processes, args.subscribers))
        _log(
            f"load generator: {len(publisher_groups)} publisher process(es), "
            f"{len(subscriber_groups)} sink process(es)"
        )
        self.publisher_procs = [
            _LoadProcess(context, "publisher", f"salon-bench-pub-{i}", self.ice_address)
            for i in range(len(publisher_groups))
        ]
        self.sink_procs = [
            _LoadProcess(context, "sink", f"salon-bench-sink-{i}", self.ice_address)
            for i in range(len(subscriber_groups))
        ]
        _log(f"publishing {args.publishers} stream(s)")
        streams: dict[int, str] = {}
        for process, group in zip(self.publisher_procs, publisher_groups, strict=True):
            command, kwargs = self._publish(group)
            process.send(command, **kwargs)
        for process in self.publisher_procs:
            streams.update(process.reply(_CONNECT_TIMEOUT + 30, server))
        _settle(server)
        rss_before, _ = _tree_rss_kb(server.pid)

        _log(f"subscribing {args.subscribers} client(s) to each stream")
        ordered = sorted(streams.items())
        # --spread: the first half subscribes before the second, so that the first half fills
        # the session's first router and the second half goes to the second worker's.
        phases = (
            [subscriber_groups]
            if self.split is None
            else [
                [[s for s in g if s < self.split] for g in subscriber_groups],
                [[s for s in g if s >= self.split] for g in subscriber_groups],
            ]
        )
        sinks_of: dict[int, int] = {}  # sink process → its sinks so far
        for phase in phases:
            busy = [(i, p, g) for i, (p, g) in enumerate(zip(self.sink_procs, phase, strict=True)) if g]
            for _, process, group in busy:
                command, kwargs = self._subscribe(group, ordered)
                process.send(command, **kwargs)
            for i, process, _ in busy:
                sinks_of[i] = process.reply(
                    _CONNECT_TIMEOUT + 30 + 0.5 * len(ordered) * args.subscribers, server
                )
        consumers = sum(sinks_of.values())
        _settle(server)
        rss_after, processes = _tree_rss_kb(server.pid)
        idle0 = self._cpu([])
        time.sleep(_IDLE_SAMPLE)
        idle1 = self._cpu([])
        span = idle1.at - idle0.at
        return {
            "consumers": consumers,
            "processes": processes,
            "rss_before": rss_before,
            "rss_after": rss_after,
            "idle_main": (idle1.main - idle0.main) / span,
            "idle_workers": (idle1.workers - idle0.workers) / span,
            "idle_workers_run": (idle1.worker_run - idle0.worker_run) / span,
            "idle_workers_wakeups": (idle1.worker_voluntary - idle0.worker_voluntary) / span,
            "publisher_processes": len(self.publisher_procs),
            "sink_processes": len(self.sink_procs),
        }

    def start(self, rate: float) -> None:
        _all(self.publisher_procs, "start", 10.0, self.server, rate=rate)

    def warm_up(self) -> None:
        deadline = time.monotonic() + _WARMUP_TIMEOUT
        while not all(_all(self.sink_procs, "started", 10.0, self.server)):
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {_WARMUP_TIMEOUT:.0f} s waiting for every sink to start")
            time.sleep(0.1)
        time.sleep(1.0)

    def counters(self) -> tuple[dict[int, int], dict[str, int]]:
        merged: dict[int, int] = {}
        extra = {"late_frames": 0, "send_errors": 0, "key_frame_requests": 0}
        for reply in _all(self.publisher_procs, "counters", 10.0, self.server):
            merged.update(reply["counters"])
            for key in extra:
                extra[key] += reply[key]
        return merged, extra

    def window(self, duration: float) -> dict[str, Any]:
        """One measured window at the current rate."""
        server = self.server
        c0, extra0 = self.counters()
        cpu0 = self._cpu(self.loader_pids)
        time.sleep(duration)
        cpu1 = self._cpu(self.loader_pids)
        c1, extra1 = self.counters()
        time.sleep(_DRAIN)  # the last packets of the window reach the sinks
        if not server.alive():
            raise BenchError(f"the server died during the run{server.tail()}")
        results = _all(self.sink_procs, "collect", 60.0, server, c0=c0, c1=c1, split=self.split)
        elapsed = cpu1.at - cpu0.at
        delays = array.array("q")
        for result in results:
            delays.frombytes(result["delays"])
        forwarded = sum(r["forwarded"] for r in results)
        expected = sum(r["expected"] for r in results)
        sent = sum(c1[i] - c0[i] for i in c0)
        workers = cpu1.workers - cpu0.workers
        main = cpu1.main - cpu0.main
        ordered = sorted(delays)

        def ms(q: float) -> float | None:
            value = percentile(ordered, q, presorted=True)
            return None if value is None else round(value / 1e6, 3)

        def per_packet(seconds: float) -> float | None:
            return round(seconds / forwarded * 1e6, 2) if forwarded else None

        def per_packet_count(count: int) -> float | None:
            return round(count / forwarded, 4) if forwarded else None

        per_worker = {
            pid: round((cpu1.per_worker.get(pid, 0.0) - cpu0.per_worker.get(pid, 0.0)) / elapsed, 3)
            for pid in cpu1.per_worker
        }
        by_half: dict[str, Any] = {}
        if self.split is not None:
            # The delay the pipe adds, packet by packet: its first arrival at a sink of the
            # second half (through the pipe) minus its first arrival at one of the first half.
            firsts: tuple[dict[int, int], dict[int, int]] = ({}, {})
            for result in results:
                for half, (keys, values) in zip(firsts, result["earliest"], strict=True):
                    counters_, delays_ = array.array("q"), array.array("q")
                    counters_.frombytes(keys)
                    delays_.frombytes(values)
                    for counter, delay in zip(counters_, delays_, strict=True):
                        if delay < half.get(counter, 1 << 62):
                            half[counter] = delay
            added = sorted(d - firsts[0][c] for c, d in firsts[1].items() if c in firsts[0])
            by_half["added_by_packet"] = {
                q: None if (v := percentile(added, f, presorted=True)) is None else round(v / 1e6, 3)
                for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            } | {"samples": len(added)}
            for i, name in enumerate(("first_half", "second_half")):
                samples = array.array("q")
                for result in results:
                    samples.frombytes(result["halves"][i])
                values = sorted(samples)
                by_half[name] = {
                    q: None if (v := percentile(values, f, presorted=True)) is None else round(v / 1e6, 3)
                    for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
                } | {"samples": len(values)}
        return {
            "elapsed": round(elapsed, 3),
            "packets_in_per_second": round(sent / elapsed, 1),
            "forwarded_per_second": round(forwarded / elapsed, 1),
            "worker_cpu_us_per_forwarded_packet": per_packet(workers),
            "main_cpu_us_per_forwarded_packet": per_packet(main),
            "cpu_us_per_forwarded_packet": per_packet(workers + main),
            "worker_cpu": {
                "seconds": round(workers, 3),
                "user_seconds": round(cpu1.worker_user - cpu0.worker_user, 3),
                "system_seconds": round(cpu1.worker_system - cpu0.worker_system, 3),
                "utilisation": round(workers / elapsed, 3),
                "utilisation_per_process": per_worker,
            },
            # The same time from the scheduler's nanosecond accounting (no 10 ms ticks), and
            # the workers' wake-ups (voluntary switches) and preemptions per forwarded packet.
            "worker_scheduler": {
                "run_us_per_forwarded_packet": per_packet(cpu1.worker_run - cpu0.worker_run),
                "wakeups_per_forwarded_packet": per_packet_count(
                    cpu1.worker_voluntary - cpu0.worker_voluntary
                ),
                "preemptions_per_forwarded_packet": per_packet_count(
                    cpu1.worker_involuntary - cpu0.worker_involuntary
                ),
            },
            "main_cpu": {"seconds": round(main, 3), "utilisation": round(main / elapsed, 3)},
            "loss": {
                "packets": expected - forwarded,
                "ratio": round((expected - forwarded) / expected, 6) if expected else None,
                "expected": expected,
                "sinks_started_in_window": sum(r["late_start"] for r in results),
            },
            "delay_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0), "samples": len(ordered)},
            **({"delay_ms_by_half": by_half} if by_half else {}),
            # --transport-cc: packets that reached a sink without the transport-wide sequence
            # number (cumulative since the sinks connected; 0 when the server stamps them all).
            "unstamped_packets": sum(r["unstamped"] for r in results)
            if getattr(self.args, "transport_cc", False)
            else None,
            "load_generator": {
                "cpu_utilisation": round((cpu1.loaders - cpu0.loaders) / elapsed, 3),
                "late_frames": extra1["late_frames"] - extra0["late_frames"],
                "send_errors": extra1["send_errors"] - extra0["send_errors"],
                "key_frame_requests": extra1["key_frame_requests"] - extra0["key_frame_requests"],
            },
        }

    def close(self) -> None:
        for process in self.sink_procs + self.publisher_procs:
            process.stop()


def _split(items: list[int], groups: int) -> list[list[int]]:
    """``items`` dealt round-robin into ``groups`` non-empty lists."""
    return [items[i::groups] for i in range(groups) if items[i::groups]]


def _saturation(rig: _Rig, args: argparse.Namespace) -> dict[str, Any]:
    """Step the rate up by ``_SATURATION_STEP`` until the sinks see loss (or the workers are
    pegged, or the time budget is spent), then measure once at half the last clean rate."""
    steps: list[dict[str, Any]] = []
    rate = float(args.rate)
    step_seconds = min(float(args.duration), _SATURATION_WINDOW)
    deadline = time.monotonic() + _SATURATION_BUDGET
    last_clean: float | None = None
    limited_by_load_generator = False
    while rate <= _MAX_RATE and time.monotonic() + step_seconds + 2 < deadline:
        rig.start(rate)
        time.sleep(1.0)
        window = rig.window(step_seconds)
        step = {"rate_per_publisher": rate, **window}
        steps.append(step)
        ratio = window["loss"]["ratio"] or 0.0
        late = window["load_generator"]["late_frames"]
        _log(
            f"  {rate:7.0f} pkt/s in per publisher: {window['forwarded_per_second']:8.0f} fwd/s, "
            f"worker {window['worker_cpu']['utilisation']:.0%}, loss {ratio:.3%}, "
            f"p99 {window['delay_ms']['p99']} ms, late frames {late}"
        )
        if ratio > _SATURATION_LOSS:
            break
        if window["packets_in_per_second"] < 0.9 * rate * args.publishers:
            # The publishers cannot keep the schedule (the machine, not the server, is full):
            # the server is not saturated yet, but the rate cannot be raised any further.
            limited_by_load_generator = True
            last_clean = rate
            break
        last_clean = rate
        rate = round(rate * _SATURATION_STEP)
    half: dict[str, Any] | None = None
    if last_clean is not None:
        half_rate = max(5.0, last_clean / 2)
        rig.start(half_rate)
        time.sleep(1.0)
        half = {
            "rate_per_publisher": half_rate,
            **rig.window(min(float(args.duration), 2 * _SATURATION_WINDOW)),
        }
        _log(
            f"  half load ({half_rate:.0f} pkt/s): "
            f"delay p50/p99 {half['delay_ms']['p50']}/{half['delay_ms']['p99']} ms"
        )
    saturated = steps[-1] if steps and steps[-1]["rate_per_publisher"] != last_clean else None
    return {
        "loss_threshold": _SATURATION_LOSS,
        "limited_by_load_generator": limited_by_load_generator,
        "max_clean_rate_per_publisher": last_clean,
        "max_clean_forwarded_per_second": next(
            (s["forwarded_per_second"] for s in steps if s["rate_per_publisher"] == last_clean), None
        ),
        "first_lossy_step": None
        if saturated is None
        else {
            "rate_per_publisher": saturated["rate_per_publisher"],
            "forwarded_per_second": saturated["forwarded_per_second"],
            "loss_ratio": saturated["loss"]["ratio"],
            "worker_utilisation": saturated["worker_cpu"]["utilisation"],
            "late_frames": saturated["load_generator"]["late_frames"],
        },
        "half_load": half,
        "steps": steps,
    }


def _run(
    args: argparse.Namespace,
    server: _Watched,
    *,
    ice_address: str = "127.0.0.1",
    janus: tuple[str, int] | None = None,
    split: int | None = None,
) -> dict[str, Any]:
    machine_description = machine()  # load average before anything of ours runs
    _log(machine_line(machine_description))
    rig = _Rig(args, server, ice_address=ice_address, janus=janus, split=split)
    try:
        setup = rig.connect()
        _log(f"warming up at {args.rate:g} packets/s per publisher")
        rig.start(args.rate)
        rig.warm_up()
        _log(f"measuring for {args.duration:g} s")
        window = rig.window(args.duration)
        saturation = None
        if args.saturate:
            _log("stepping the rate up to saturation")
            saturation = _saturation(rig, args)
        _all(rig.publisher_procs, "stop", 10.0, server)
    finally:
        rig.close()
    consumers = setup["consumers"]
    elapsed = window["elapsed"]
    forwarded = window["forwarded_per_second"] * elapsed
    idle_workers = setup["idle_workers"]

    def above_idle(key: str, idle: float) -> float | None:
        seconds = window[key]["seconds"]
        return round(max(0.0, seconds - idle * elapsed) / forwarded * 1e6, 2) if forwarded else None

    report: dict[str, Any] = {
        "benchmark": "sfu",
        "parameters": {
            "publishers": args.publishers,
            "subscribers": args.subscribers,
            "consumers": consumers,
            "duration": args.duration,
            "rate_per_publisher": args.rate,
            "transport_cc": bool(getattr(args, "transport_cc", False)),
            "workers": server.workers if isinstance(server, ServerProcess) else None,
            "publisher_processes": setup["publisher_processes"],
            "sink_processes": setup["sink_processes"],
            "packet_size": PACKET_SIZE,
            "packets_per_frame": PACKETS_PER_FRAME,
            "key_frame_interval": KEY_FRAME_INTERVAL,
            "burst": "one frame's packets back to back, every packets_per_frame/rate seconds",
        },
        "machine": machine_description,
        **window,
        "worker_cpu_us_per_forwarded_packet_above_idle": above_idle("worker_cpu", idle_workers),
        "server_cpu": {
            "seconds": round(window["worker_cpu"]["seconds"] + window["main_cpu"]["seconds"], 3),
            "utilisation": round(window["worker_cpu"]["utilisation"] + window["main_cpu"]["utilisation"], 3),
            "idle_utilisation_workers": round(idle_workers, 4),
            "idle_utilisation_main": round(setup["idle_main"], 4),
            # Connected, no media flowing: the workers' fixed cost (timers, consent checks,
            # reports), in scheduler-accounted ms per second, and their wake-ups per second.
            "idle_run_ms_per_second_workers": round(setup["idle_workers_run"] * 1e3, 3),
            "idle_wakeups_per_second_workers": round(setup["idle_workers_wakeups"], 1),
            "processes": setup["processes"],
        },
        "memory": {
            "rss_before_subscribing_kb": setup["rss_before"],
            "rss_after_subscribing_kb": setup["rss_after"],
            "rss_per_consumer_kb": round((setup["rss_after"] - setup["rss_before"]) / consumers, 1)
            if consumers
            else None,
        },
    }
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if saturation is not None:
        report["saturation"] = saturation
    return report


_MAX_RATE = 20000.0
_SATURATION_STEP = 1.5
_SATURATION_LOSS = 0.001
"""A step with more than this share of window packets lost is past saturation."""
_SATURATION_WINDOW = 4.0
_SATURATION_BUDGET = 120.0


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    for name, default in (("sink_processes", None), ("saturate", False), ("spread", False)):
        if not hasattr(args, name):  # ``salon bench sfu`` from a parser without these options
            setattr(args, name, default)
    if not 1 <= args.publishers <= _MAX_PUBLISHERS:
        raise BenchError(f"--publishers must be 1..{_MAX_PUBLISHERS}")
    if not 1 <= args.subscribers <= _MAX_SUBSCRIBERS:
        raise BenchError(f"--subscribers must be 1..{_MAX_SUBSCRIBERS}")
    if not 0 < args.duration <= _MAX_DURATION:
        raise BenchError(f"--duration must be in (0, {_MAX_DURATION:.0f}] seconds")
    if not 5 <= args.rate <= _MAX_RATE:
        raise BenchError("--rate must be 5..20000 packets/s per publisher")
    if args.sink_processes is not None and not 1 <= args.sink_processes <= 16:
        raise BenchError("--sink-processes must be 1..16")
    workers = args.workers
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if getattr(args, "spread", False):
        return _spread(args)
    with tempfile.TemporaryDirectory(prefix="salon-bench-sfu-") as tmp:
        server = ServerProcess(pathlib.Path(tmp), workers=workers)
        try:
            server.start()
            _log(f"server pid {server.pid} on {server.url}")
            return _run(args, server)
        finally:
            server.stop()


def _spread(args: argparse.Namespace) -> dict[str, Any]:
    """``--spread``: the same 1 → N session on one worker, then spread over two (half the
    subscribers on each worker, the stream piped to the second); both reports and how they
    compare (:func:`_compare_spread`)."""
    if args.subscribers < 2:
        raise BenchError("--spread needs at least 2 subscribers")
    split = args.subscribers // 2
    reports: dict[str, Any] = {}
    for name, workers, serve_args in (
        ("one_worker", 1, []),
        ("two_workers", 2, ["--router-spread-consumers", str(split * args.publishers)]),
    ):
        _log(f"--spread: {name}")
        with tempfile.TemporaryDirectory(prefix="salon-bench-sfu-") as tmp:
            server = ServerProcess(pathlib.Path(tmp), workers=workers, serve_args=serve_args)
            try:
                server.start()
                _log(f"server pid {server.pid} on {server.url}")
                reports[name] = _run(args, server, split=split)
            finally:
                server.stop()
    one, two = reports["one_worker"], reports["two_workers"]
    return {
        "benchmark": "sfu-spread",
        "parameters": one["parameters"] | {"spread_consumers": split * args.publishers},
        "machine": two["machine"],
        "comparison": _compare_spread(one, two),
        **reports,
    }


def _compare_spread(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    """The figures of ``--spread``: each worker's share of the forwarding CPU (target: neither
    above 60 %), total CPU per forwarded packet against one worker (target: at most 1.15x),
    and the delay the pipe adds (target: p99 under 2 ms): per packet, its first arrival at a
    subscriber on the second worker minus its first at one on the first
    (``pipe_added_delay_ms_by_packet``), and the difference of the two halves' percentiles
    (``pipe_added_delay_ms``, which the sinks' own scheduling blurs more)."""
    per_process = two["worker_cpu"]["utilisation_per_process"]
    total = sum(per_process.values())
    shares = sorted((round(u / total, 3) for u in per_process.values()), reverse=True) if total else []

    def ratio(key: str) -> float | None:
        a, b = one.get(key), two.get(key)
        return round(b / a, 3) if a and b else None

    halves = two.get("delay_ms_by_half", {})
    first, second = halves.get("first_half", {}), halves.get("second_half", {})
    by_packet = halves.get("added_by_packet", {})

    def added(q: str) -> float | None:
        a, b = first.get(q), second.get(q)
        return None if a is None or b is None else round(b - a, 3)

    return {
        "worker_cpu_shares": shares,
        "worker_cpu_us_per_forwarded_packet_ratio": ratio("worker_cpu_us_per_forwarded_packet"),
        "cpu_us_per_forwarded_packet_ratio": ratio("cpu_us_per_forwarded_packet"),
        "pipe_added_delay_ms": {"p50": added("p50"), "p99": added("p99")},
        "pipe_added_delay_ms_by_packet": by_packet,
        "delay_ms_local_half": first,
        "delay_ms_piped_half": second,
        "targets": {"max_worker_share": 0.6, "max_cpu_ratio": 1.15, "max_pipe_p99_ms": 2.0},
    }


@contextlib.contextmanager
def _event_loop() -> Iterator[asyncio.Runner]:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m salon.bench.sfu``: the same as ``salon bench sfu``."""
    from salon.cli.bench_options import add_sfu_arguments

    parser = argparse.ArgumentParser(prog="python -m salon.bench.sfu", description=__doc__.split("\n")[0])
    add_sfu_arguments(parser)
    return run_sfu_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
