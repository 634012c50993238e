"""``salon bench quality --forwarding``: forwarding CPU per packet, three layers in against one.

Issue 13 asks for the forwarding cost of simulcast: *three layers in and 16 subscribers on
mixed layers against one layer in, in the same run*. This mode measures it on the real server:
``python -m salon serve`` with one media worker on 127.0.0.1, CPU read from ``/proc`` for the
worker processes (:class:`salon.bench.sfu._CpuSplit`, as ``salon bench sfu`` does), packets
counted where they arrive.

The load is ``salon bench sfu``'s machinery (its signalling client, its track-less aiortc
publisher injecting synthetic VP8-shaped RTP, its counting sink that decodes nothing), in this
process:

* **simulcast publisher**: three encodings announced the legacy way (``a=ssrc-group:SIM``
  munged into aiortc's offer), 30 frames/s, 1 / 2 / 4 packets of ``--packet-size`` bytes per
  frame (q / h / f), key frames carrying 320x180 / 640x360 / 1280x720 (the producer measures
  each layer's bitrate and size, so the allocator and the preferences see real layers);
* **single-layer publisher**: one encoding shaped like the top one (4 packets a frame, 1280x720);
* **16 subscribers**, each subscribed to both streams; on the simulcast stream 6 prefer 320x180,
  5 prefer 640x360 and 5 have no preference (``preferred_resolution`` in ``subscribe``: the
  allocator then forwards q, h and f respectively; every layer fits the initial budget).

Two windows of ``--duration`` seconds in the same run, each after a warm-up: only the simulcast
publisher sending (*three layers in*), then only the single-layer one (*one layer in*). For each:
worker CPU (``utime + stime`` of the media worker processes) / packets the subscribers received
in the window. The difference is what simulcast costs per forwarded packet: layer selection,
rewriting of picture IDs, and every packet of the two layers a consumer does not forward still
being received, decrypted, measured and offered to each consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import secrets
import struct
import sys
import tempfile
import time
from typing import Any

from salon.bench._harness import BenchError, ServerProcess, machine, machine_line
from salon.bench.sfu import (
    _CLOCK_RATE,
    _CONNECT_TIMEOUT,
    _HEADER,
    _STAMP,
    _answer,
    _CpuSplit,
    _offer,
    _Publisher,
    _Signalling,
    _Sink,
    _wait_local,
)

__all__ = ["run_forwarding"]

SUBSCRIBERS = 16
#: Preferred resolution of the subscribers on the simulcast stream: 6 on q, 5 on h, 5 on f.
PREFERENCES: tuple[tuple[int, int] | None, ...] = (((320, 180),) * 6) + (((640, 360),) * 5) + ((None,) * 5)
LAYER_SIZES = ((320, 180), (640, 360), (1280, 720))
LAYER_PACKETS = (1, 2, 4)
FRAME_RATE = 30
KEY_FRAME_INTERVAL = 60


def _log(message: str) -> None:
    print(f"salon bench quality --forwarding: {message}", file=sys.stderr, flush=True)


def _payloads(size: int, packets: int, key: bool, width: int, height: int) -> list[bytes]:
    """One frame's payloads (without the stamp): a VP8 descriptor (S=1 on the first), on the
    first a payload header (key frames: start code and size)."""
    body = size - 12 - _STAMP.size
    out = []
    for i in range(packets):
        if i == 0:
            start = bytes([0x10, 0x10 if key else 0x11, 0x00, 0x00])
            if key:
                start += b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
        else:
            start = b"\x00"
        out.append(start + bytes((i * 7 + j) & 0xFF for j in range(body - len(start))))
    return out


class _LayeredPublisher(_Publisher):
    """``salon bench sfu``'s publisher sending ``layers`` encodings (legacy SIM group when
    more than one), each with its own SSRC, sequence numbers and key-frame size."""

    def __init__(self, index: int, layers: tuple[int, ...], packet_size: int) -> None:
        super().__init__(index)
        self.layers = layers  # indexes into LAYER_SIZES / LAYER_PACKETS
        self.packet_size = packet_size
        self.extra_ssrcs = [secrets.randbits(31) | 1 for _ in layers[1:]]
        self._seqs = [secrets.randbits(16) for _ in layers]
        self._frames = {
            (layer, key): _payloads(packet_size, LAYER_PACKETS[layer], key, *LAYER_SIZES[layer])
            for layer in layers
            for key in (False, True)
        }

    def _munge(self, sdp: str) -> str:
        if len(self.layers) == 1:
            return sdp
        ssrc = self.transceiver.sender._ssrc
        lines = sdp.split("\r\n")
        cname = next(line.split("cname:", 1)[1] for line in lines if line.startswith(f"a=ssrc:{ssrc} cname:"))
        added = [f"a=ssrc:{extra} cname:{cname}" for extra in self.extra_ssrcs]
        added.append("a=ssrc-group:SIM " + " ".join(str(s) for s in [ssrc, *self.extra_ssrcs]))
        at = max(i for i, line in enumerate(lines) if line.startswith(f"a=ssrc:{ssrc} ")) + 1
        return "\r\n".join(lines[:at] + added + lines[at:])

    async def publish(self, port: int, session_id: str, token: str) -> None:
        self.signalling = await _Signalling.join(port, session_id, token)
        reply = await self.signalling.request(
            {
                "type": "publish",
                "name": f"layers-{len(self.layers)}",
                "has_audio": False,
                "sdp": self._munge(await _offer(self.pc)),
            }
        )
        if reply.get("type") != "published" or not reply.get("answer"):
            raise BenchError(f"publish failed: {reply}")
        self.stream_id = reply["stream"]["stream_id"]
        await _answer(self.pc, reply["answer"])
        self._hook()

    def send_frame(self) -> None:
        key = self._force_key or self._frame % KEY_FRAME_INTERVAL == 0
        self._force_key = False
        self._frame += 1
        timestamp = self._timestamp
        for i, layer in enumerate(self.layers):
            ssrc = self._ssrc if i == 0 else self.extra_ssrcs[i - 1]
            payloads = self._frames[(layer, key)]
            last = len(payloads) - 1
            for j, payload in enumerate(payloads):
                packet = (
                    _HEADER.pack(0x80, (0x80 if j == last else 0) | self._pt, self._seqs[i], timestamp, ssrc)
                    + payload
                    + _STAMP.pack(time.monotonic_ns(), self.counter, self.index)
                )
                self._seqs[i] = (self._seqs[i] + 1) & 0xFFFF
                self.counter += 1
                self._send(packet)
        self._timestamp = (timestamp + _CLOCK_RATE // FRAME_RATE) & 0xFFFFFFFF


class _CountingSink(_Sink):
    """``salon bench sfu``'s sink, counting every packet (the stamped counters of a simulcast
    stream are not one sequence per subscriber)."""

    def __init__(self, subscriber: int, publisher: int, preferred: tuple[int, int] | None) -> None:
        super().__init__(subscriber, publisher)
        self.preferred = preferred
        self.received = 0

    def _subscribe_message(self, stream_id: str, offer: str) -> dict[str, Any]:
        message = super()._subscribe_message(stream_id, offer)
        if self.preferred is not None:
            message["preferred_resolution"] = {"width": self.preferred[0], "height": self.preferred[1]}
        return message

    def on_rtp(self, data: bytes) -> None:
        self.received += 1
        self.first = 0


async def _pace(publisher: _LayeredPublisher, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    interval = 1 / FRAME_RATE
    next_at = loop.time()
    while not stop.is_set():
        publisher.send_frame()
        next_at += interval
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -interval:
            next_at = loop.time()


async def _window(
    server: ServerProcess,
    publisher: _LayeredPublisher,
    sinks: list[_CountingSink],
    warm_up: float,
    duration: float,
) -> dict[str, Any]:
    stop = asyncio.Event()
    publisher._force_key = True
    pacer = asyncio.get_running_loop().create_task(_pace(publisher, stop))
    try:
        await asyncio.sleep(warm_up)
        sent0, counts0 = publisher.counter, [s.received for s in sinks]
        cpu0 = _CpuSplit(server.pid, [])
        await asyncio.sleep(duration)
        cpu1 = _CpuSplit(server.pid, [])
        sent1, counts1 = publisher.counter, [s.received for s in sinks]
    finally:
        stop.set()
        await pacer
    elapsed = cpu1.at - cpu0.at
    forwarded = sum(b - a for a, b in zip(counts0, counts1, strict=True))
    per_sink = [b - a for a, b in zip(counts0, counts1, strict=True)]
    workers = cpu1.workers - cpu0.workers
    return {
        "elapsed": round(elapsed, 2),
        "packets_in_per_second": round((sent1 - sent0) / elapsed, 1),
        "forwarded_per_second": round(forwarded / elapsed, 1),
        "worker_cpu_us_per_forwarded_packet": round(workers / forwarded * 1e6, 2) if forwarded else None,
        "worker_cpu_us_per_packet_in": round(workers / (sent1 - sent0) * 1e6, 2) if sent1 > sent0 else None,
        "worker_cpu_utilisation": round(workers / elapsed, 3),
        "main_cpu_utilisation": round((cpu1.main - cpu0.main) / elapsed, 3),
        "packets_per_second_by_subscriber": [round(n / elapsed, 1) for n in per_sink],
    }


async def _run(args: argparse.Namespace, server: ServerProcess) -> dict[str, Any]:
    session_id = server.create_session()
    simulcast = _LayeredPublisher(1, (0, 1, 2), args.packet_size)
    single = _LayeredPublisher(2, (2,), args.packet_size)
    signallings: list[_Signalling] = []
    sinks_simulcast: list[_CountingSink] = []
    sinks_single: list[_CountingSink] = []
    try:
        for publisher in (simulcast, single):
            await publisher.publish(server.port, session_id, server.token(session_id))
        await _wait_local(lambda: simulcast.connected and single.connected, _CONNECT_TIMEOUT, "publishers")
        for publisher in (simulcast, single):
            publisher.send_frame()  # announced (subscribable) on the first packet
        _log(f"two streams published; subscribing {SUBSCRIBERS} subscribers to both")
        for index, preferred in enumerate(PREFERENCES):
            signalling = await _Signalling.join(server.port, session_id, server.token(session_id))
            signallings.append(signalling)
            sink = _CountingSink(index, 1, preferred)
            await sink.subscribe(signalling, simulcast.stream_id)
            sinks_simulcast.append(sink)
            sink = _CountingSink(index, 2, None)
            await sink.subscribe(signalling, single.stream_id)
            sinks_single.append(sink)
        every = sinks_simulcast + sinks_single
        await _wait_local(lambda: all(s.connected for s in every), _CONNECT_TIMEOUT, "subscribers")
        _log(f"three layers in: {args.warm_up:.0f} s warm-up, {args.duration:.0f} s window")
        three = await _window(server, simulcast, sinks_simulcast, args.warm_up, args.duration)
        _log(f"three layers in: {three['worker_cpu_us_per_forwarded_packet']} us/packet; now one layer in")
        one = await _window(server, single, sinks_single, args.warm_up, args.duration)
        _log(f"one layer in: {one['worker_cpu_us_per_forwarded_packet']} us/packet")
        rates = three["packets_per_second_by_subscriber"]
        expected = [FRAME_RATE * LAYER_PACKETS[0]] * 6 + [FRAME_RATE * LAYER_PACKETS[1]] * 5
        expected += [FRAME_RATE * LAYER_PACKETS[2]] * 5
        on_layer = sum(
            1 for rate, want in zip(rates, expected, strict=True) if abs(rate - want) <= 0.15 * want
        )
        three["subscribers_on_their_layer"] = on_layer
        a = three["worker_cpu_us_per_forwarded_packet"]
        b = one["worker_cpu_us_per_forwarded_packet"]
        return {
            "packet_size": args.packet_size,
            "frame_rate": FRAME_RATE,
            "subscribers": SUBSCRIBERS,
            "three_layers_in": three,
            "one_layer_in": one,
            "ratio_three_to_one": round(a / b, 2) if a and b else None,
        }
    finally:
        for sink in sinks_simulcast + sinks_single:
            await sink.close()
        for publisher in (simulcast, single):
            await publisher.close()
        for signalling in signallings:
            await signalling.close()


def run_forwarding(args: argparse.Namespace) -> dict[str, Any]:
    description = machine()
    _log(machine_line(description))
    with tempfile.TemporaryDirectory(prefix="salon-bench-quality-fwd-") as tmp:
        server = ServerProcess(pathlib.Path(tmp), workers=1)
        server.start()
        try:
            result = asyncio.run(_run(args, server))
        finally:
            server.stop()
    return {
        "benchmark": "quality_forwarding",
        "machine": description,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        **result,
    }
