"""A bot that prints each participant's audio level, computed from that participant's own
audio (every subscriber decodes its own stream: no mix). Usage:
``python audio_levels.py URL SESSION_ID TOKEN``."""

from __future__ import annotations

import asyncio
import math
import sys

from salon.client import AudioFrame, Session, StreamDropped, StreamReceived, Subscriber

levels: dict[str, float] = {}


async def main(url: str, session_id: str, token: str) -> None:
    async with Session(session_id, token, url, ice_addresses=["127.0.0.1"]) as session:

        async def listen(event: StreamReceived) -> None:
            name = event.stream.name or event.stream.stream_id[:8]

            def on_audio(frame: AudioFrame) -> None:
                previous = levels.get(name, -100.0)
                levels[name] = max(frame.level, previous - 1.5)  # a peak meter with decay

            await session.subscribe(Subscriber(event.stream, on_audio_frame=on_audio, video=False))

        session.on(StreamReceived, listen)
        session.on(
            StreamDropped, lambda event: levels.pop(event.stream.name or event.stream.stream_id[:8], None)
        )
        while True:
            await asyncio.sleep(0.5)
            print("  ".join(f"{name}: {_bar(level)}" for name, level in sorted(levels.items())) or "(nobody)")


def _bar(dbfs: float) -> str:
    filled = 0 if math.isinf(dbfs) else max(0, min(20, int((dbfs + 60) / 3)))
    return f"{'#' * filled:<20} {dbfs:6.1f} dBFS"


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except KeyboardInterrupt:
        pass
