"""What a Python SDK subscriber decoded, for tests that switch layers: the size and arrival
time of every frame, waits on them, and the decoder errors aiortc logs (and survives)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from salon.client import VideoFrame

Size = tuple[int, int]


class DecodeErrors(logging.Handler):
    """aiortc's receiver logs (and survives) every frame its decoder rejects."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "decode" in message:
            self.messages.append(message)


@contextmanager
def decode_errors() -> Iterator[DecodeErrors]:
    """Collects aiortc's decoder errors while the block runs."""
    errors = DecodeErrors()
    logger = logging.getLogger("aiortc.rtcrtpreceiver")
    logger.addHandler(errors)
    try:
        yield errors
    finally:
        logger.removeHandler(errors)


class FrameLog:
    """Pass :meth:`on_frame` as a subscriber's ``on_video_frame``."""

    def __init__(self) -> None:
        self.sizes: list[Size] = []
        self.times: list[float] = []
        self._added = asyncio.Event()

    def on_frame(self, frame: VideoFrame) -> None:
        self.sizes.append((frame.width, frame.height))
        self.times.append(time.monotonic())
        self._added.set()

    def frame_rate(self, window: float = 2.0) -> float:
        """Frames per second over the last ``window`` seconds."""
        now = time.monotonic()
        return sum(1 for t in self.times if t > now - window) / window

    async def wait_rate(self, what: str, predicate: Callable[[float], bool], timeout: float = 20) -> float:
        """Wait until the frame rate of the last 2 s satisfies ``predicate``; that rate."""
        end = time.monotonic() + timeout
        while True:
            rate = self.frame_rate()
            if predicate(rate):
                return rate
            assert time.monotonic() < end, f"{what}: the frame rate stayed at {rate:.1f}/s for {timeout} s"
            await asyncio.sleep(0.2)

    async def wait_frame(
        self, what: str, predicate: Callable[[Size], bool], timeout: float = 30, start: int = 0
    ) -> int:
        """The index of the first frame from ``start`` on whose size satisfies ``predicate``,
        waiting up to ``timeout`` seconds for it."""
        end = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.sizes)):
                if predicate(self.sizes[i]):
                    return i
            start = len(self.sizes)
            remaining = end - time.monotonic()
            assert remaining > 0, (
                f"{what}: no such frame in {timeout} s; sizes seen: {sorted(set(self.sizes))}"
            )
            self._added.clear()
            try:
                await asyncio.wait_for(self._added.wait(), remaining)
            except TimeoutError:
                pass
