"""Basic video chat: publish a test pattern and a tone, subscribe to everyone else, and print
what arrives. Usage: ``python basic_chat.py URL SESSION_ID TOKEN [NAME]``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from salon.client import (
    Disconnected,
    Publisher,
    Session,
    SignalReceived,
    StreamDropped,
    StreamReceived,
    Subscriber,
    VideoFrame,
)


def frame_printer(name: str) -> Callable[[VideoFrame], None]:
    """A video callback printing the first frame's size, then every 90th (about every 3 s)."""
    frames = 0

    def show(frame: VideoFrame) -> None:
        nonlocal frames
        frames += 1
        if frames % 90 == 1:
            print(f"{name}: frame {frames}, {frame.width}x{frame.height}")

    return show


async def main(url: str, session_id: str, token: str, name: str = "basic chat") -> None:
    # ice_addresses=["127.0.0.1"]: the server runs on this machine (see the README).
    async with Session(session_id, token, url, ice_addresses=["127.0.0.1"]) as session:
        # Made after connecting, the iterator still starts with the streams already there.
        events = session.events()
        await session.publish(Publisher(name))  # default: test pattern + 440 Hz tone
        await session.signal("chat", f"hello from {name}")
        async for event in events:
            match event:
                case StreamReceived(stream=stream):
                    print(f"{stream.name!r} joined, subscribing")
                    await session.subscribe(Subscriber(stream, on_video_frame=frame_printer(stream.name)))
                case StreamDropped(stream=stream, reason=reason):
                    print(f"{stream.name!r} left ({reason})")
                case SignalReceived(type=kind, data=data, from_connection_id=sender):
                    print(f"signal {kind!r} from {sender}: {data}")
                case Disconnected(reason=reason):
                    print(f"disconnected: {reason}")


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:5]))
    except KeyboardInterrupt:
        pass
