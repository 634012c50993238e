"""Basic video chat: publish a test pattern and a tone, subscribe to everyone else, and print
what arrives. Usage: ``python basic_chat.py URL SESSION_ID TOKEN``."""

from __future__ import annotations

import asyncio
import sys

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


async def main(url: str, session_id: str, token: str) -> None:
    async with Session(session_id, token, url, ice_addresses=["127.0.0.1"]) as session:
        await session.publish(Publisher("basic chat"))  # default: test pattern + 440 Hz tone
        await session.signal("chat", "hello from Python")
        async for event in session.events():
            match event:
                case StreamReceived(stream=stream):
                    print(f"{stream.name!r} joined, subscribing")

                    def show(frame: VideoFrame, name: str = stream.name) -> None:
                        if int(frame.timestamp * 30) % 90 == 0:  # about every 3 s
                            print(f"{name}: {frame.width}x{frame.height} at {frame.timestamp:.1f} s")

                    await session.subscribe(Subscriber(stream, on_video_frame=show))
                case StreamDropped(stream=stream, reason=reason):
                    print(f"{stream.name!r} left ({reason})")
                case SignalReceived(type=kind, data=data, from_connection_id=sender):
                    print(f"signal {kind!r} from {sender}: {data}")
                case Disconnected(reason=reason):
                    print(f"disconnected: {reason}")


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except KeyboardInterrupt:
        pass
