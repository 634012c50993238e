"""The examples, run as their READMEs say (``python examples/<name>/<name>.py URL SESSION_ID
TOKEN ...``) against the real server, each checked by what it prints or sends."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pathlib
import re
import signal
import sys
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
from sdk_helpers import session_for, wait_for

from salon.client import (
    CustomAudioSource,
    Publisher,
    StreamReceived,
    Subscriber,
    TestPatternSource,
    ToneSource,
    read_test_pattern_index,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(120)

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples"


class Example:
    """One example running in its own process; its output lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, pattern: str, what: str, timeout: float = 45.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the output so far."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines if (m := regex.search(line))][:1]
            return bool(found) or self.process.returncode is not None

        try:
            await wait_for(seen, what, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; output:\n{self.output()}") from None
        code = self.process.returncode
        assert found, f"the example exited ({code}) before {what}; output:\n{self.output()}"
        return found[0]

    async def stop(self) -> None:
        """Ctrl-C, as a user would; killed if it does not exit within 15 s."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def run_example(name: str, *args: str) -> AsyncIterator[Example]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name / f"{name}.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    example = Example(process)
    try:
        yield example
    finally:
        await example.stop()


async def test_two_basic_chats_see_each_other_including_the_one_already_there(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    async with run_example("basic_chat", server.url, sid, server.token(sid), "alice") as alice:
        await wait_for(lambda: server.sdk.list_streams(sid).count == 1, "alice's stream", timeout=45)
        # Bob joins a session where alice already publishes: he must see her stream.
        async with run_example("basic_chat", server.url, sid, server.token(sid), "bob") as bob:
            await bob.wait_line(r"^'alice' joined, subscribing$", "bob to see alice's existing stream")
            await bob.wait_line(r"^alice: frame 1, 640x480$", "bob to decode alice's video")
            await alice.wait_line(r"^'bob' joined, subscribing$", "alice to see bob's stream")
            await alice.wait_line(r"^bob: frame 1, 640x480$", "alice to decode bob's video")
            await alice.wait_line(r"^signal 'chat' from \S+: hello from bob$", "bob's signal at alice")
        await alice.wait_line(r"^'bob' left", "alice to see bob leave")


_METER = re.compile(r"(\w+) \((\w{8})\): #* +(-?(?:\d+\.\d|inf)) dBFS")


async def test_audio_levels_prints_each_existing_stream_by_id_even_when_names_repeat(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    silence = CustomAudioSource()  # nothing pushed: digital silence
    async with session_for(server, sid) as loud, session_for(server, sid) as quiet:
        # Two participants with the same name: one speaks (a tone at -15 dBFS), one is silent.
        tone = await loud.publish(Publisher("twin", video=False, audio_source=ToneSource(440.0)))
        hush = await quiet.publish(Publisher("twin", video=False, audio_source=silence))
        await wait_for(lambda: server.sdk.list_streams(sid).count == 2, "both streams' media", timeout=20)
        async with run_example("audio_levels", server.url, sid, server.token(sid)) as bot:

            def meters() -> dict[str, float]:
                last = {}
                for line in bot.lines:
                    for name, short, level in _METER.findall(line):
                        assert name == "twin", line
                        last[short] = float(level)
                return last

            def both_measured() -> bool:
                levels = meters()
                return levels.get(tone.stream_id[:8], -math.inf) > -30 and hush.stream_id[:8] in levels

            try:
                await wait_for(both_measured, "a level for the tone and a meter for the silence", timeout=45)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; output:\n{bot.output()}") from None
            levels = meters()
            assert -25 < levels[tone.stream_id[:8]] < -5, bot.output()  # 0.25 full scale sine: -15 dBFS
            assert levels[hush.stream_id[:8]] < -60, bot.output()


async def test_the_recorder_writes_a_playable_file_of_the_existing_stream(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    out = tmp_path / "recordings"
    async with session_for(server, sid) as alice:
        publisher = Publisher("alice", audio=False, video_source=TestPatternSource(width=320, height=240))
        stream = await alice.publish(publisher)
        await wait_for(lambda: server.sdk.list_streams(sid).count == 1, "the stream's media", timeout=20)
        async with run_example("recorder", server.url, sid, server.token(sid), str(out)) as recorder:
            name = stream.stream_id
            await recorder.wait_line(rf"^recording 'alice' to .*{name}\.webm$", "recording to start")
            await wait_for(lambda: (out / f"{name}.png").exists(), "the first frame's snapshot", 45)
            await asyncio.sleep(4)  # about 120 frames
            await alice.unpublish(publisher)  # the recorder finishes the file when the stream drops
            done = await recorder.wait_line(rf"{name}\.webm: (\d+) frames$", "the file to be closed")
            assert int(done.group(1)) >= 20, recorder.output()
    with av.open(str(out / f"{stream.stream_id}.webm")) as container:
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    assert len(frames) >= 20 and frames[0].shape == (240, 320)
    indices = [read_test_pattern_index(frame) for frame in frames]
    assert indices == sorted(indices) and indices[0] > 0, indices


async def test_the_numpy_capturer_publishes_the_frames_it_draws(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    frames: list[np.ndarray] = []
    async with session_for(server, sid) as viewer:
        received: list[StreamReceived] = []
        viewer.on(StreamReceived, received.append)
        async with run_example("numpy_capturer", server.url, sid, server.token(sid)):
            await wait_for(lambda: received, "the capturer's stream", timeout=45)
            subscriber = Subscriber(received[0].stream, audio=False)
            await viewer.subscribe(subscriber)
            async with asyncio.timeout(45):
                async for frame in subscriber.video_frames():
                    assert (frame.width, frame.height) == (640, 360)
                    frames.append(frame.to_rgb())
                    if len(frames) >= 40:
                        break
    assert received[0].stream.name == "numpy" and received[0].stream.width == 640
    # What draw() paints: green rises from 0 at the top to 255 at the bottom, blue is 128,
    # and a white 80x80 square bounces along rows 140-220.
    image = frames[-1].astype(np.int32)
    green = image[10:130, :, 1].mean(axis=1)
    assert np.all(np.diff(green) >= -3) and green[-1] - green[0] > 70, green
    assert abs(image[300:350, :, 2].mean() - 128) < 12
    square = image[150:210, :, :].min(axis=2).mean(axis=0) > 225  # white columns
    assert 50 <= int(square.sum()) <= 110, int(square.sum())
    lefts = {int(np.argmax(f[150:210].min(axis=2).mean(axis=0) > 225)) for f in frames[::5]}
    assert len(lefts) > 2, lefts  # it moves
