"""``salon demo subscribe`` records a stream published with the SDK to a playable WebM file."""

from __future__ import annotations

import asyncio
import pathlib

import av
import numpy as np
import pytest
from sdk_helpers import session_for, wait_for

from salon.cli.main import main
from salon.client import Publisher, read_test_pattern_index
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(60)


async def test_demo_subscribe_writes_a_playable_webm_and_a_snapshot(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    out = tmp_path / "out"
    async with session_for(server, sid) as alice:
        stream = await alice.publish(Publisher("alice"))
        await wait_for(lambda: server.sdk.list_streams(sid).count == 1, "the stream's media to flow")
        argv = ["demo", "subscribe", server.url, sid, server.token(sid), "--out", str(out), "--duration", "5"]
        assert await asyncio.to_thread(main, argv) == 0
    video = out / f"{stream.stream_id}.webm"
    assert video.stat().st_size > 10_000
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name in ("vp8", "libvpx")
        frames = [frame for _, frame in zip(range(20), container.decode(video=0), strict=False)]
    assert len(frames) == 20 and (frames[0].width, frames[0].height) == (640, 480)
    indices = [read_test_pattern_index(f.to_ndarray(format="gray")) for f in frames]
    assert indices == sorted(indices) and indices[0] > 0, indices
    with av.open(str(out / f"{stream.stream_id}.png")) as snapshot:
        image = next(snapshot.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (480, 640, 3) and read_test_pattern_index(np.asarray(image)) > 0
