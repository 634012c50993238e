"""A custom capturer: draw frames with numpy and push them; the SDK paces, timestamps and
encodes them (and drops frames rather than blocking if you push faster than it sends).
Usage: ``python numpy_capturer.py URL SESSION_ID TOKEN``."""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from salon.client import CustomAudioSource, CustomVideoSource, Publisher, Session

WIDTH, HEIGHT, FPS = 640, 360, 30


def draw(t: float) -> np.ndarray:
    """A moving colour gradient with a bouncing square, RGB uint8."""
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None]
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = (255 * (0.5 + 0.5 * np.sin(2 * np.pi * (x + t / 4)))).astype(np.uint8)
    image[..., 1] = (255 * y).astype(np.uint8)
    image[..., 2] = 128
    left = int((WIDTH - 80) * (0.5 + 0.5 * np.sin(t * 2)))
    image[140:220, left : left + 80] = 255
    return image


async def main(url: str, session_id: str, token: str) -> None:
    video = CustomVideoSource(width=WIDTH, height=HEIGHT, frame_rate=FPS)
    audio = CustomAudioSource(sample_rate=48000)
    # ice_addresses=["127.0.0.1"]: the server runs on this machine (see the README).
    async with Session(session_id, token, url, ice_addresses=["127.0.0.1"]) as session:
        stream = await session.publish(Publisher("numpy", video_source=video, audio_source=audio))
        print(f"publishing {stream.stream_id}; Ctrl-C to stop")
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            t = loop.time() - start
            video.push(draw(t))
            chirp = np.sin(2 * np.pi * (300 + 100 * np.sin(t)) * (np.arange(1600) / 48000 + t))
            audio.push((chirp * 3000).astype(np.int16))  # 1600 samples = 33 ms per frame
            await asyncio.sleep(1 / FPS)
            if int(t) % 5 == 0 and int(t - 1 / FPS) % 5 != 0:
                print(f"pushed {video.pushed} frames, dropped {video.dropped}")


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except KeyboardInterrupt:
        pass
