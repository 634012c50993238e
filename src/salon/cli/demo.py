"""``salon demo publish | subscribe``: the client SDK from the command line.

* ``salon demo publish URL SESSION_ID TOKEN [--file PATH]`` publishes a numbered test pattern
  and a 440 Hz tone (or a media file, looped: its video and audio, whichever it has) until
  interrupted or ``--duration`` elapses.
* ``salon demo subscribe URL SESSION_ID TOKEN --out DIR`` subscribes to every stream of the
  session and writes each one's video to ``DIR/<stream_id>.webm`` (VP8, playable anywhere)
  plus a PNG snapshot of its first frame, ``DIR/<stream_id>.png``.

Encoding runs on one worker thread per stream so the event loop keeps receiving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import logging
import pathlib
import queue
import signal
import sys
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from salon.client import Session, VideoFrame

__all__ = ["add_demo_parser", "run_demo"]

logger = logging.getLogger(__name__)


def add_demo_parser(commands: Any) -> None:
    """Register ``demo`` on the ``salon`` sub-command parser."""
    demo = commands.add_parser("demo", help="publish or record streams with the Python client SDK")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    for name, text in (
        ("publish", "publish a test pattern and a tone (or a media file)"),
        ("subscribe", "record every stream of a session to WebM files"),
    ):
        sub = demo_commands.add_parser(name, help=text)
        sub.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
        sub.add_argument("session_id")
        sub.add_argument("token")
        sub.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
        sub.add_argument(
            "--ice-address",
            action="append",
            default=None,
            help="gather ICE candidates on this local address (repeatable; default 127.0.0.1 for a "
            "server on localhost, else every interface)",
        )
        sub.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
        if name == "publish":
            sub.add_argument("--file", type=pathlib.Path, help="publish this media file instead (looped)")
            sub.add_argument("--name", default="salon demo", help="the stream name")
        else:
            sub.add_argument("--out", type=pathlib.Path, required=True, help="directory for the files")


def run_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.demo_command == "subscribe":
        args.out.mkdir(parents=True, exist_ok=True)
    from salon.client import ClientError

    try:
        return asyncio.run(_publish(args) if args.demo_command == "publish" else _subscribe(args))
    except ClientError as exc:
        print(f"salon demo: error: {exc}", file=sys.stderr)
        return 1


def _ice_addresses(args: argparse.Namespace) -> list[str] | None:
    if args.ice_address:
        return list(args.ice_address)
    host = urllib.parse.urlsplit(args.url).hostname
    return ["127.0.0.1"] if host in ("127.0.0.1", "localhost") else None


async def _run_until_done(session: Session, duration: float | None) -> None:
    """Wait for ``duration``, Ctrl-C / SIGTERM, or the session's end."""
    from salon.client import Disconnected

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    session.on(Disconnected, lambda event: stop.set())
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


async def _publish(args: argparse.Namespace) -> int:
    from salon.client import (
        MediaFileAudioSource,
        MediaFileVideoSource,
        Publisher,
        Session,
        TestPatternSource,
        ToneSource,
    )

    if args.file is not None:
        has_video, has_audio = _probe(args.file)
        publisher = Publisher(
            args.name,
            video=has_video,
            audio=has_audio,
            video_source=MediaFileVideoSource(args.file) if has_video else None,
            audio_source=MediaFileAudioSource(args.file) if has_audio else None,
        )
    else:
        publisher = Publisher(args.name, video_source=TestPatternSource(), audio_source=ToneSource(440.0))
    async with Session(args.session_id, args.token, args.url, ice_addresses=_ice_addresses(args)) as session:
        stream = await session.publish(publisher)
        print(f"publishing stream {stream.stream_id} as connection {session.connection_id}", flush=True)
        await _run_until_done(session, args.duration)
    return 0


def _probe(path: pathlib.Path) -> tuple[bool, bool]:
    """Whether the media file has (video, audio): a file without one is published without it.

    :raises SourceError: it cannot be read, or has neither.
    """
    import av

    from salon.client import SourceError

    try:
        with av.open(str(path)) as container:
            has = bool(container.streams.video), bool(container.streams.audio)
    except (OSError, av.FFmpegError) as exc:
        raise SourceError(f"cannot open {str(path)!r}: {exc}") from exc
    if not any(has):
        raise SourceError(f"{str(path)!r} has neither video nor audio")
    return has


class StreamRecorder:
    """Writes one stream's frames to ``<out>/<stream_id>.webm`` (VP8) and its first frame
    to ``<out>/<stream_id>.png``, encoding on its own thread (frames are dropped, not
    queued without bound, if the encoder falls behind)."""

    def __init__(self, out: pathlib.Path, stream_id: str) -> None:
        self.video_path = out / f"{stream_id}.webm"
        self.snapshot_path = out / f"{stream_id}.png"
        self.frames_written = 0
        self.dropped = 0
        self._queue: queue.Queue[VideoFrame | None] = queue.Queue(maxsize=60)
        self._thread = threading.Thread(target=self._run, name=f"salon-record-{stream_id[:8]}", daemon=True)
        self._thread.start()

    def on_video_frame(self, frame: VideoFrame) -> None:
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Finish the file (blocking until the encoder thread has flushed it)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        import av

        container: Any = None
        stream: Any = None
        first: float | None = None
        last_pts = -1
        try:
            while (frame := self._queue.get()) is not None:
                if container is None:
                    _snapshot(frame, self.snapshot_path)
                    container = av.open(str(self.video_path), mode="w", format="webm")
                    stream = container.add_stream("libvpx", rate=30)
                    stream.width, stream.height = frame.width, frame.height
                    stream.pix_fmt = "yuv420p"
                    stream.bit_rate = 1_000_000
                    stream.codec_context.time_base = fractions.Fraction(1, 1000)
                    first = frame.timestamp
                if (frame.width, frame.height) != (stream.width, stream.height):
                    continue  # the file keeps its first size
                assert first is not None
                pts = max(int((frame.timestamp - first) * 1000), last_pts + 1)
                last_pts = pts
                out = av.VideoFrame.from_ndarray(frame.to_i420(), format="yuv420p")
                out.pts = pts
                out.time_base = fractions.Fraction(1, 1000)
                for packet in stream.encode(out):
                    container.mux(packet)
                self.frames_written += 1
        except Exception:
            logger.exception("recorder %s failed", self.video_path)
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    for packet in stream.encode(None):
                        container.mux(packet)
                container.close()


def _snapshot(frame: VideoFrame, path: pathlib.Path) -> None:
    import av

    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height = frame.width, frame.height
        stream.pix_fmt = "rgb24"
        image = av.VideoFrame.from_ndarray(frame.to_rgb(), format="rgb24")
        for packet in stream.encode(image):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


async def _subscribe(args: argparse.Namespace) -> int:
    from salon.client import Session, StreamDropped, StreamReceived, Subscriber

    out: pathlib.Path = args.out
    recorders: dict[str, StreamRecorder] = {}
    session = Session(args.session_id, args.token, args.url, ice_addresses=_ice_addresses(args))

    async def on_stream(event: StreamReceived) -> None:
        recorder = recorders[event.stream.stream_id] = StreamRecorder(out, event.stream.stream_id)
        print(
            f"recording stream {event.stream.stream_id} ({event.stream.name!r}) to {recorder.video_path}",
            flush=True,
        )
        await session.subscribe(Subscriber(event.stream, on_video_frame=recorder.on_video_frame, audio=False))

    def on_dropped(event: StreamDropped) -> None:
        recorder = recorders.pop(event.stream.stream_id, None)
        if recorder is not None:
            threading.Thread(target=recorder.close, daemon=True).start()

    session.on(StreamReceived, on_stream)
    session.on(StreamDropped, on_dropped)
    async with session:
        await _run_until_done(session, args.duration)
    for recorder in recorders.values():
        await asyncio.to_thread(recorder.close)
        print(f"{recorder.video_path}: {recorder.frames_written} frames", flush=True)
    return 0
