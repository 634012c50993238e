"""A Python SDK subscriber that reports what it receives, one JSON line at a time, for shaped links.

Run inside a network namespace of a :class:`~salon.bench.netlab.NetLab` leaf by the quality
tests and ``salon bench quality``::

    python -m salon.bench.quality_agent URL SESSION_ID TOKEN --ice-address 10.201.1.2

It connects, subscribes to every stream, and prints to stdout, every ``--interval`` seconds::

    {"t": 12.5, "kind": "report", "streams": {"<stream id>": {"frames": 15, "sizes": {"640x360": 15},
     "audio_frames": 25, "bitrate": 812000.0, "decode_errors": 0, "frozen_ms": 0.0}}}

``frames`` and ``sizes`` count the video frames decoded since the previous report,
``frozen_ms`` is the longest gap between two decoded video frames that ended (or is still
open) in the interval, ``decode_errors`` counts aiortc's "failed to decode" warnings
(a decoder that saw a gap or a broken frame), and ``bitrate`` is the subscription's payload
rate from :meth:`~salon.client.Subscriber.get_stats`.

Besides reports it prints one line per session event (``{"kind": "event", "event":
"VideoDisabled", ...}``) and ``{"kind": "ready"}`` once connected. ``--publish WxH`` also
publishes a test pattern. Commands are read from stdin, one JSON object per line:
``{"preferred_resolution": [w, h]}`` and ``{"preferred_frame_rate": fps}`` (applied to
every subscriber that has the method), ``{"quit": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from salon.bench.netlab import NetLab
from salon.client import Event, Publisher, Session, StreamReceived, Subscriber, TestPatternSource, VideoFrame

__all__ = ["AgentProcess", "main"]


class _DecodeErrors(logging.Handler):
    """Counts aiortc's decoder failures (logged as warnings by ``aiortc.rtcrtpreceiver``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.count += 1


class _Watch:
    """One subscriber's counters between two reports."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.sizes: Counter[str] = Counter()
        self.frames = 0
        self.audio_frames = 0
        self.last_frame: float | None = None
        self.longest_gap = 0.0

    def on_video(self, frame: VideoFrame) -> None:
        now = time.monotonic()
        if self.last_frame is not None:
            self.longest_gap = max(self.longest_gap, now - self.last_frame)
        self.last_frame = now
        self.frames += 1
        self.sizes[f"{frame.width}x{frame.height}"] += 1

    def on_audio(self, _frame: object) -> None:
        self.audio_frames += 1

    async def report(self, decode_errors: int) -> dict[str, Any]:
        now = time.monotonic()
        open_gap = now - self.last_frame if self.last_frame is not None else 0.0
        try:
            stats = await asyncio.wait_for(self.subscriber.get_stats(), 2.0)
            bitrate: float | None = stats.bitrate
        except Exception:
            bitrate = None
        out = {
            "frames": self.frames,
            "sizes": dict(self.sizes),
            "audio_frames": self.audio_frames,
            "bitrate": bitrate,
            "decode_errors": decode_errors,
            "frozen_ms": round(max(self.longest_gap, open_gap) * 1000, 1),
        }
        self.frames = self.audio_frames = 0
        self.sizes.clear()
        self.longest_gap = 0.0
        return out


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _event_fields(event: Event) -> dict[str, Any]:
    fields: dict[str, Any] = {"kind": "event", "event": type(event).__name__}
    if dataclasses.is_dataclass(event):
        for item in dataclasses.fields(event):
            value = getattr(event, item.name)
            if isinstance(value, str | int | float | bool) or value is None:
                fields[item.name] = value
            elif hasattr(value, "stream_id"):
                fields[item.name] = value.stream_id
            elif hasattr(value, "stream") and hasattr(value.stream, "stream_id"):
                fields[item.name] = value.stream.stream_id  # a Subscriber
            else:
                fields[item.name] = str(value)
    return fields


async def _commands(watches: dict[str, _Watch], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        raw = await reader.readline()
        if not raw:
            stop.set()
            return
        command = json.loads(raw)
        if command.get("quit"):
            stop.set()
            return
        for watch in watches.values():
            if "preferred_resolution" in command:
                width, height = command["preferred_resolution"] or (None, None)
                setter = getattr(watch.subscriber, "set_preferred_resolution", None)
                if setter is not None:
                    await setter((width, height) if width else None)
            if "preferred_frame_rate" in command:
                setter = getattr(watch.subscriber, "set_preferred_frame_rate", None)
                if setter is not None:
                    await setter(command["preferred_frame_rate"])
        _emit({"kind": "applied", "command": command})


async def run(
    url: str,
    session_id: str,
    token: str,
    ice_addresses: Sequence[str],
    interval: float,
    publish: tuple[int, int] | None = None,
) -> None:
    errors = _DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(errors)
    start = time.monotonic()
    watches: dict[str, _Watch] = {}
    stop = asyncio.Event()
    session = Session(session_id, token, url, ice_addresses=list(ice_addresses))

    async def subscribe(event: StreamReceived) -> None:
        subscriber = Subscriber(event.stream)
        watch = _Watch(subscriber)
        subscriber.on_video_frame = watch.on_video
        subscriber.on_audio_frame = watch.on_audio
        watches[event.stream.stream_id] = watch
        await session.subscribe(subscriber)

    session.on(Event, lambda event: _emit({"t": round(time.monotonic() - start, 3), **_event_fields(event)}))
    session.on(StreamReceived, subscribe)
    await session.connect()
    if publish is not None:
        width, height = publish
        source = TestPatternSource(width=width, height=height, frame_rate=30)
        stream = await session.publish(Publisher("quality-agent", video_source=source))
        _emit({"kind": "published", "stream_id": stream.stream_id})
    _emit({"kind": "ready", "connection_id": session.connection_id})
    commands = asyncio.create_task(_commands(watches, stop))
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
            seen = errors.count
            streams = {stream_id: await watch.report(seen) for stream_id, watch in list(watches.items())}
            _emit({"t": round(time.monotonic() - start, 3), "kind": "report", "streams": streams})
    finally:
        commands.cancel()
        await session.disconnect()


class AgentProcess:
    """This module run as a process in a lab leaf; its JSON lines collected by a thread."""

    def __init__(self, lab: NetLab, leaf: str, url: str, session_id: str, token: str, *extra: str) -> None:
        link = lab.links[leaf]
        self.leaf = leaf
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr = b""
        self.proc = lab.popen(
            leaf,
            [
                sys.executable, "-m", "salon.bench.quality_agent", url, session_id,
                token, "--ice-address", link.leaf_address, *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errors = threading.Thread(target=self._read_errors, daemon=True)
        self._errors.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = json.loads(raw)
            self.lines.append(line)
            self._queue.put(line)

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr = (self._stderr + raw)[-20000:]

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30
    ) -> dict[str, Any]:
        """The next line (from now on) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.leaf}: no {what} within {timeout:g} s; stderr: {self.stderr[-3000:]}"
                )
            try:
                line = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if predicate(line):
                return line

    def reports(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("kind") == "report" and line["t"] >= since]

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"quit": True})
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self._errors.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m salon.bench.quality_agent", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("session_id")
    parser.add_argument("token")
    parser.add_argument("--ice-address", action="append", default=[], help="gather ICE on this address")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--publish", metavar="WxH", help="also publish a test pattern of this size")
    args = parser.parse_args(argv)
    publish = tuple(int(side) for side in args.publish.split("x")) if args.publish else None
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(run(args.url, args.session_id, args.token, args.ice_address, args.interval, publish))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
