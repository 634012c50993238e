"""``salon bench client``: the client SDK's own costs, against a real server on loopback.

The server runs in a child process (``python -m salon serve``), so its CPU and memory do not
count. The benchmark process publishes a 640x480 30 fps test pattern plus a tone with the
SDK, then measures:

1. **Time to first frame**: from ``Session.connect()`` to the first decoded video frame of
   the stream already in the session (connect → ``StreamReceived`` → subscribe → ICE/DTLS →
   keyframe → decode), over ``--runs`` fresh sessions.
2. **SDK CPU per received frame, outside the decoder**: the SDK's whole per-frame path
   (:meth:`Subscriber._deliver_video`: wrapping the decoded frame, counters, the callback
   dispatch and the iterator queue), measured in CPU time of the event-loop thread
   (``time.thread_time_ns``: time the thread spends descheduled on a loaded machine does not
   count, unlike wall time) on live frames, and separately in a tight loop over one decoded
   frame. aiortc's depacketising and libvpx decoding (its own thread) are excluded on
   purpose.
3. **Memory per subscriber**: the RSS growth of this process when ``--subscribers`` more
   subscribers (each its own peer connection and decoder) receive the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time
from typing import Any

from salon.bench._harness import BenchError, ServerProcess, machine, machine_line
from salon.client import (
    Publisher,
    Session,
    StreamReceived,
    Subscriber,
    TestPatternSource,
    ToneSource,
    VideoFrame,
)

__all__ = ["run_client_bench"]

_SERVING = re.compile(r"salon serving on (http://\S+)")


def run_client_bench(args: argparse.Namespace) -> int:
    machine_description = machine()  # the load average before anything of ours runs
    print(f"salon bench client: {machine_line(machine_description)}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="salon-bench-client-") as tmp:
        server = ServerProcess(pathlib.Path(tmp))
        try:
            url = server.start()
            results = asyncio.run(_bench(url, server, args))
        except BenchError as exc:
            print(f"salon bench client: error: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            server.stop()
    results["machine"] = machine_description
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _report(results)
    return 0


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _bench(url: str, server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    from salon.client import StreamReceived, Subscriber

    session_id = await asyncio.to_thread(server.create_session)
    tokens = server.tokens(session_id, args.runs + 4)
    loopback = ["127.0.0.1"]
    publisher_session = Session(session_id, tokens.pop(), url, ice_addresses=loopback)
    await publisher_session.connect()
    await publisher_session.publish(
        Publisher("bench", video_source=TestPatternSource(width=640, height=480), audio_source=ToneSource())
    )
    results: dict[str, Any] = {}
    try:
        observer = Session(session_id, tokens.pop(), url, ice_addresses=loopback)
        flowing = asyncio.Event()
        observer.on(StreamReceived, lambda event: flowing.set())
        await observer.connect()
        await asyncio.wait_for(flowing.wait(), 20)

        # 1. connect() → first decoded frame of the existing stream.
        latencies: list[float] = []
        for _ in range(args.runs):
            latencies.append(await _time_to_first_frame(session_id, tokens.pop(), url, loopback))
            await asyncio.sleep(0.3)
        results["time_to_first_frame_ms"] = {
            "runs": len(latencies),
            "p50": round(statistics.median(latencies), 1),
            "p90": round(_pct(latencies, 0.9), 1),
            "min": round(min(latencies), 1),
            "max": round(max(latencies), 1),
        }

        # 2. The SDK's per-frame path on live frames, then in a tight loop.
        stream = next(iter(observer.streams.values()))
        timings: list[int] = []
        done = asyncio.Event()
        last: list[Any] = []
        subscriber = Subscriber(stream, on_video_frame=lambda frame: None, audio=False)
        deliver = subscriber._deliver_video

        def timed(decoded: Any) -> None:
            # CPU time of this (the loop) thread only: the SDK's work, not wall time.
            start = time.thread_time_ns()
            deliver(decoded)
            timings.append(time.thread_time_ns() - start)
            last[:] = [decoded]
            if len(timings) >= args.frames:
                done.set()

        subscriber._deliver_video = timed  # type: ignore[method-assign]
        frames = subscriber.video_frames(maxsize=2)  # an iterator nobody reads: the drop path
        await observer.subscribe(subscriber)
        await asyncio.wait_for(done.wait(), args.frames / 10 + 30)
        decoded = last[0]
        loop_n = 20000
        start = time.thread_time_ns()
        for _ in range(loop_n):
            deliver(decoded)
        loop_ns = (time.thread_time_ns() - start) / loop_n
        wrapped = VideoFrame(decoded.width, decoded.height, 0.0, decoded)
        start = time.thread_time_ns()
        for _ in range(2000):
            wrapped.planes  # noqa: B018 - timing the property
        planes_ns = (time.thread_time_ns() - start) / 2000
        start = time.thread_time_ns()
        for _ in range(200):
            wrapped.to_rgb()
        rgb_ns = (time.thread_time_ns() - start) / 200
        await frames.aclose()
        results["sdk_cpu_per_frame_us"] = {
            "frame": f"{decoded.width}x{decoded.height}",
            "live_frames": len(timings),
            "live_p50": round(statistics.median(timings) / 1000, 2),
            "live_p99": round(_pct([float(t) for t in timings], 0.99) / 1000, 2),
            "tight_loop_mean": round(loop_ns / 1000, 2),
            "optional_planes_view": round(planes_ns / 1000, 2),
            "optional_to_rgb": round(rgb_ns / 1000, 1),
        }

        # 3. Memory per subscriber (each its own peer connection, decoder and reader tasks).
        await asyncio.sleep(2)
        before = _rss_kb()
        counters: list[Subscriber] = []
        for _ in range(args.subscribers):
            extra = Subscriber(stream)
            counters.append(extra)
            await observer.subscribe(extra)
        for _ in range(150):  # up to 30 s for every subscriber to decode 30 frames
            if all(s.video_frames_received >= 30 for s in counters):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
        after = _rss_kb()
        results["memory_per_subscriber_kib"] = {
            "subscribers": args.subscribers,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "per_subscriber": round((after - before) / args.subscribers),
        }
        await observer.disconnect()
    finally:
        await publisher_session.disconnect()
    return results


async def _time_to_first_frame(session_id: str, token: str, url: str, loopback: list[str]) -> float:
    from salon.client import StreamReceived, Subscriber

    first = asyncio.Event()
    session = Session(session_id, token, url, ice_addresses=loopback)

    async def on_stream(event: StreamReceived) -> None:
        await session.subscribe(Subscriber(event.stream, on_video_frame=lambda frame: first.set()))

    session.on(StreamReceived, on_stream)
    start = time.perf_counter()
    await session.connect()
    try:
        await asyncio.wait_for(first.wait(), 20)
        return (time.perf_counter() - start) * 1000
    finally:
        await session.disconnect()


def _report(results: dict[str, Any]) -> None:
    ttff = results["time_to_first_frame_ms"]
    cpu = results["sdk_cpu_per_frame_us"]
    memory = results["memory_per_subscriber_kib"]
    print(f"time from connect() to first decoded frame ({ttff['runs']} runs): p50 {ttff['p50']} ms, ", end="")
    print(f"p90 {ttff['p90']} ms, min {ttff['min']} ms, max {ttff['max']} ms")
    print(f"SDK CPU per {cpu['frame']} frame outside the decoder: live p50 {cpu['live_p50']} us, ", end="")
    print(f"p99 {cpu['live_p99']} us, tight loop {cpu['tight_loop_mean']} us")
    print(f"  optional: .planes view {cpu['optional_planes_view']} us, .to_rgb() {cpu['optional_to_rgb']} us")
    print(f"memory per subscriber: {memory['per_subscriber']} KiB ({memory['subscribers']} subscribers)")
    print(machine_line(results["machine"]))
