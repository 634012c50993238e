"""A bot that prints each participant's audio level, computed from that participant's own
audio (every subscriber decodes its own stream: no mix). Usage:
``python audio_levels.py URL SESSION_ID TOKEN``."""

from __future__ import annotations

import asyncio
import math
import sys

from salon.client import AudioFrame, Session, StreamDropped, StreamReceived, Subscriber

#: Stream ID → (the stream's name, its peak level in dBFS). Keyed by ID: names may repeat.
levels: dict[str, tuple[str, float]] = {}


async def main(url: str, session_id: str, token: str) -> None:
    # ice_addresses=["127.0.0.1"]: the server runs on this machine (see the README).
    async with Session(session_id, token, url, ice_addresses=["127.0.0.1"]) as session:

        async def listen(event: StreamReceived) -> None:
            stream_id, name = event.stream.stream_id, event.stream.name or "(no name)"
            levels[stream_id] = (name, -math.inf)

            def on_audio(frame: AudioFrame) -> None:
                previous = levels.get(stream_id, (name, -100.0))[1]
                levels[stream_id] = (name, max(frame.level, previous - 1.5))  # a peak meter with decay

            await session.subscribe(Subscriber(event.stream, on_audio_frame=on_audio, video=False))

        # Registered after connecting: called at once for the streams already in the session.
        session.on(StreamReceived, listen)
        session.on(StreamDropped, lambda event: levels.pop(event.stream.stream_id, None))
        while True:
            await asyncio.sleep(0.5)
            meters = [f"{name} ({sid[:8]}): {_bar(level)}" for sid, (name, level) in sorted(levels.items())]
            print("  ".join(meters) or "(nobody)", flush=True)


def _bar(dbfs: float) -> str:
    filled = 0 if math.isinf(dbfs) else max(0, min(20, int((dbfs + 60) / 3)))
    return f"{'#' * filled:<20} {dbfs:6.1f} dBFS"


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except KeyboardInterrupt:
        pass
