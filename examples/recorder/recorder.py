"""Record every stream of a session to its own WebM file (VP8), one encoder thread per
stream. Usage: ``python recorder.py URL SESSION_ID TOKEN OUT_DIR``; Ctrl-C to stop."""

from __future__ import annotations

import asyncio
import pathlib
import sys

from salon.cli.demo import StreamRecorder
from salon.client import Session, StreamDropped, StreamReceived, Subscriber


async def main(url: str, session_id: str, token: str, out: pathlib.Path) -> None:
    recorders: dict[str, StreamRecorder] = {}
    # ice_addresses=["127.0.0.1"]: the server runs on this machine (see the README).
    session = Session(session_id, token, url, ice_addresses=["127.0.0.1"])

    async def record(event: StreamReceived) -> None:
        recorder = recorders[event.stream.stream_id] = StreamRecorder(out, event.stream.stream_id)
        print(f"recording {event.stream.name!r} to {recorder.video_path}")
        await session.subscribe(Subscriber(event.stream, on_video_frame=recorder.on_video_frame, audio=False))

    async def finish(event: StreamDropped) -> None:
        recorder = recorders.pop(event.stream.stream_id, None)
        if recorder is not None:
            await asyncio.to_thread(recorder.close)
            print(f"{recorder.video_path}: {recorder.frames_written} frames")

    session.on(StreamReceived, record)
    session.on(StreamDropped, finish)
    try:
        async with session:
            await session.wait_disconnected()
    finally:
        for recorder in recorders.values():
            await asyncio.to_thread(recorder.close)


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[4])
    target.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], target))
    except KeyboardInterrupt:
        pass
