"""Archives through ``salon serve``'s real recorders when things go wrong.

* 5 % of the publisher's VP8 packets are dropped on its leg to the server, during an
  individual and during a composed archive (a UDP relay on 127.0.0.1 the publisher's only ICE
  path goes through, as tests/e2e/browser/test_sdk_loss_recovery.py does for Chromium; RTX
  retransmissions pass): the worker NACKs, the
  individual WebM has the test pattern's frames in order, no gap beyond a lost frame or two,
  and decodes without an error; the composed MP4 shows the pattern without freezing.
* ``kill -9`` of the archiver mid-recording (individual and composed): the call goes on, the
  archive ends ``available`` with what was recorded (playable up to the kill), its reason
  naming the archiver.
* ``kill -9`` of ``salon serve`` while its archives (individual and composed) record, and
  while they are being finalised (their archivers frozen with SIGSTOP, so the kill lands while
  the archives are ``stopped``): the archivers do not outlive the server, and after the
  restart each archive is ``available`` with what was recorded (playable), with its reason.
* The recordings' disk fills up mid-recording: the call goes on, the archive ends with a
  reason saying so, the server goes on serving.
* A composed archive through a mute and unmute of video and of audio: the tile goes black
  while the video is off, the publisher's tone leaves the mix while its audio is off.

Archives are started, stopped and fetched through the official ``opentok`` SDK and downloaded
from their ``url``; every wait is on a condition, bounded generously.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import pathlib
import re
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import av
import av.logging
import httpx
import numpy as np
import opentok
import pytest
from sdk_helpers import LOOPBACK, Recorder, auto_subscribe, session_for, wait_for
from test_archive_composed import (
    ALICE_TONE,
    BLUE,
    BOB_TONE,
    RED,
    Clock,
    Mp4,
    Painted,
    archive_json,
    colour_of,
    download,
    media_flows,
    near,
    publish,
    sdk,
)

from salon.client import Publisher, Session, TestPatternSource, ToneSource, read_test_pattern_index
from salon.client import publisher as publisher_module
from tests.conftest import API_KEY, API_SECRET, RunningServer, recording_server
from tests.e2e.lossy import producer_stats, router_dumps
from tests.e2e.udp_relay import LossyRelay, relay_answer
from tests.functional.test_rest_api import auth_header
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def archive_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """The real server with ``salon serve``'s recorders (archiver processes)."""
    with recording_server(tmp_path) as server:
        yield server


async def ended(base_url: str, archive_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """The archive's JSON once it is ``available`` or ``failed`` (never left ``started`` or
    ``stopped``). Read over REST: the Python SDK's Archive has no ``reason``."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        while True:
            response = await http.get(f"/v2/project/{API_KEY}/archive/{archive_id}", headers=auth_header())
            assert response.status_code == 200, response.text
            archive: dict[str, Any] = response.json()
            if archive["status"] in ("available", "failed"):
                return archive
            assert archive["status"] in ("started", "stopped", "paused"), archive
            assert time.monotonic() < deadline, (
                f"archive {archive_id} still {archive['status']} after {timeout} s"
            )
            await asyncio.sleep(0.2)


def unzip(data: bytes, archive_id: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the files of an individual archive's ZIP."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = json.loads(archive.read(f"{archive_id}.json"))
        files = {name: archive.read(name) for name in archive.namelist() if name != f"{archive_id}.json"}
    assert sorted(files) == sorted(f["filename"] for f in manifest["files"]), (manifest, sorted(files))
    for entry in manifest["files"]:
        assert entry["size"] == len(files[entry["filename"]]), entry
    return manifest, files


def decode_video(data: bytes) -> tuple[list[av.VideoFrame], list[str], str]:
    """Every video frame of a media file, the errors FFmpeg logged decoding it, the format."""
    with av.logging.Capture() as logs, av.open(io.BytesIO(data)) as container:
        name = container.format.name
        frames = list(container.decode(video=0))
    errors = [f"{source}: {message}" for level, source, message in logs if level <= av.logging.ERROR]
    return frames, errors, name


def archiver_pids(server_pid: int) -> list[int]:
    """The archiver processes (``python -m salon.archive.archiver``) children of ``server_pid``."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and b"salon.archive.archiver" in cmdline:
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- loss on the publisher's leg ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["individual", "composed"])
async def test_an_archive_recovers_loss_on_the_publishers_leg(
    archive_server: RunningServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    server = archive_server
    sid = server.session()
    relays: list[LossyRelay] = []
    answer = publisher_module.Publisher._answer

    async def answer_through_relay(self: Publisher, sdp: str | None, stream: Any) -> None:
        assert sdp is not None
        await answer(self, await relay_answer(sdp, "VP8", 0.05, relays), stream)

    request = publisher_module.Publisher._publish_request

    def hidden_candidates(self: Publisher, sdp: str) -> Any:
        # The server sees the publisher's candidates as 127.0.0.1:9 (nothing listens): the
        # only working path is the one through the relay.
        return request(
            self, re.sub(r"^(a=candidate:\S+ \d+ udp \d+ )\S+ \d+", r"\g<1>127.0.0.1 9", sdp, flags=re.M)
        )

    monkeypatch.setattr(publisher_module.Publisher, "_answer", answer_through_relay)
    monkeypatch.setattr(publisher_module.Publisher, "_publish_request", hidden_candidates)
    try:
        async with session_for(server, sid) as alice:
            publisher = Publisher("alice", video_source=TestPatternSource(width=320, height=240), audio=False)
            stream = await alice.publish(publisher)
            await media_flows(server, sid, stream.stream_id)
            (relay,) = relays
            options: dict[str, Any] = {"output_mode": opentok.OutputModes(mode)}
            if mode == "composed":
                options["resolution"] = "640x480"  # Alice's 4:3 picture fills it, scaled 2x
            asked = time.monotonic()
            archive = await sdk(server, "start_archive", sid, **options)
            started = time.monotonic()
            deadline = started + 90
            while len(relay.dropped) < 30 or time.monotonic() - started < 6:
                assert time.monotonic() < deadline, (
                    f"in 90 s: {len(relay.dropped)} dropped, {relay.forwarded} forwarded"
                )
                await asyncio.sleep(0.1)
            relay.active = False
            lost = len(relay.dropped)

            async def recovered() -> dict[str, Any]:
                (producer,) = producer_stats(await router_dumps(server), "video")
                return producer

            # The worker NACKed what the relay dropped and the retransmissions came back.
            deadline = time.monotonic() + 20
            while (producer := await recovered())["recovered"] < 0.8 * lost:
                assert time.monotonic() < deadline, f"{lost} dropped; producer {producer}"
                await asyncio.sleep(0.2)
            await sdk(server, "stop_archive", archive.id)
            recorded = time.monotonic() - started
    finally:
        for relay in relays:
            relay.close()
    summary = f"relay dropped {lost} of {lost + relay.forwarded}; producer {producer}"
    assert producer["nacked_sequence_numbers"] >= 0.9 * lost, summary

    done = await ended(server.url, archive.id)
    assert done["status"] == "available", done
    if mode == "composed":
        # The MP4's time 0 is the archive's creation: before the start call returned.
        return check_composed_pattern(await download(done["url"]), recorded + started - asked, summary)
    _, files = unzip(await download(done["url"]), archive.id)
    frames, errors, name = decode_video(files[f"{stream.stream_id}.webm"])
    assert name == "matroska,webm" and frames
    assert errors == [], f"decoding logged errors: {errors[:5]} ({summary})"
    times = [float(f.time) for f in frames]
    indices = [read_test_pattern_index(f.to_ndarray(format="gray")) for f in frames]
    # In order, each frame once, timestamps following the frames' numbers.
    assert indices == sorted(set(indices)), f"frames out of order or repeated ({summary})"
    assert times == sorted(times), "timestamps go back"
    span = indices[-1] - indices[0] + 1
    gaps = [b - a for a, b in itertools.pairwise(indices)]
    assert len(frames) >= 0.95 * span, f"{len(frames)} frames of {span} sent ({summary}; gaps {gaps})"
    assert max(gaps) <= 10, f"largest gap {max(gaps)} frames ({summary})"
    for (t0, i0), (t1, i1) in itertools.pairwise(zip(times, indices, strict=True)):
        # ~30 fps: a step of n frames takes about n/30 s (a publisher whose loop stalls skips
        # ahead in time, not in numbers: a second of slack).
        assert t1 - t0 < (i1 - i0) / 30 + 1.0, (t0, i0, t1, i1, summary)
    assert abs(times[-1] - times[0] - recorded) < 1.5, (times[-1] - times[0], recorded)


def check_composed_pattern(data: bytes, recorded: float, summary: str) -> None:
    """A composed MP4 of the test pattern (25 fps from a 30 fps source): after the black
    frames before the first key frame, the pattern's numbers never go back, never freeze
    longer than a few frames (an unrepaired loss shows as a freeze until the next key frame)
    and never skip more than a few."""
    frames, errors, name = decode_video(data)
    assert name.startswith("mov,mp4") and frames
    assert errors == [], f"decoding logged errors: {errors[:5]} ({summary})"
    indices = [read_test_pattern_index(f.to_ndarray(format="gray")) for f in frames]
    first = next(i for i, index in enumerate(indices) if index > 0)
    shown = indices[first:]
    steps = [b - a for a, b in itertools.pairwise(shown)]
    assert min(steps) >= 0, f"the pattern went back ({summary})"
    longest = max(len(list(run)) for step, run in itertools.groupby(steps) if step == 0) if 0 in steps else 0
    assert longest <= 5, f"a freeze of {longest} frames ({summary})"
    assert max(steps) <= 10, f"a skip of {max(steps)} frames ({summary})"
    assert abs(len(frames) / 25 - recorded) < 1.0, (len(frames) / 25, recorded)


# -- kill -9 of an archiver ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["individual", "composed"])
async def test_an_archiver_killed_mid_recording_leaves_the_call_and_ends_the_archive(
    archive_server: RunningServer, tmp_path: pathlib.Path, mode: str
) -> None:
    server = archive_server
    sid = server.session()
    seen = Recorder()
    async with session_for(server, sid) as alice, session_for(server, sid, role="subscriber") as bob:
        auto_subscribe(bob, seen)
        publisher = Publisher(
            "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
        )
        stream = await alice.publish(publisher)
        await media_flows(server, sid, stream.stream_id)
        await wait_for(lambda: len(seen.indices) >= 10, "bob to decode alice's video", timeout=30)
        asked = time.monotonic()
        options: dict[str, Any] = {"output_mode": opentok.OutputModes(mode)}
        if mode == "composed":
            options["resolution"] = "640x480"
        archive = await sdk(server, "start_archive", sid, **options)
        work = tmp_path / "archives-work" / archive.id
        written = work / (f"{stream.stream_id}.webm" if mode == "individual" else "archive.mp4")
        await wait_for(
            lambda: written.exists() and written.stat().st_size > 40_000, "the file to grow", timeout=60
        )
        (pid,) = archiver_pids(os.getpid())
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic() - asked

        done = await ended(server.url, archive.id)
        # The call goes on: bob keeps decoding alice's video after the kill.
        before = len(seen.indices)
        await wait_for(lambda: len(seen.indices) >= before + 30, "bob to keep decoding", timeout=30)
        assert alice.state.name == "CONNECTED" and bob.state.name == "CONNECTED"
    assert done["reason"], f"the archive ended {done['status']} without saying why"
    assert "archiver" in done["reason"], done
    # The file held media when the archiver died (written progressively): the archive is
    # delivered with what was recorded up to the kill, and it plays.
    assert done["status"] == "available", done
    data = await download(done["url"])
    if mode == "individual":
        _, files = unzip(data, archive.id)
        data = files[f"{stream.stream_id}.webm"]
    frames, errors, _ = decode_video(data)
    assert errors == [], errors[:5]
    assert len(frames) >= 20, len(frames)
    assert 1.0 <= float(frames[-1].time) <= killed_at + 0.5, (float(frames[-1].time), killed_at)


# -- kill -9 of salon serve while archives are finalised -------------------------------------------


@pytest.mark.parametrize("phase", ["recording", "finalising"])
async def test_a_server_killed_while_archives_record_or_are_finalised_finalises_them_after_a_restart(
    tmp_path: pathlib.Path, phase: str
) -> None:
    args = ["--workers", "1"]
    frozen: list[int] = []
    try:
        with ServeProcess(tmp_path, API_KEY, API_SECRET, args) as first:
            client = opentok.Client(API_KEY, API_SECRET, api_url=first.url)
            sid = str(client.create_session(media_mode=opentok.MediaModes.routed).session_id)
            token = str(client.generate_token(sid))
            alice = Session(sid, token, first.url, ice_addresses=LOOPBACK)
            await alice.connect()
            try:
                publisher = Publisher(
                    "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
                )
                await alice.publish(publisher)
                individual = await asyncio.to_thread(
                    client.start_archive, sid, output_mode=opentok.OutputModes.individual
                )
                composed = await asyncio.to_thread(
                    client.start_archive, sid, resolution="640x480", multi_archive_tag="composed"
                )
                work = tmp_path / "archives-work"

                def recorded() -> bool:
                    webms = list((work / individual.id).glob("*.webm"))
                    mp4 = work / composed.id / "archive.mp4"
                    return bool(webms) and webms[0].stat().st_size > 40_000 and mp4.exists()

                await wait_for(recorded, "both archives to hold media", timeout=60)
                # Enough of the composed MP4 for a fragment or two (a 1 s fragment each).
                mp4 = work / composed.id / "archive.mp4"
                size = mp4.stat().st_size
                await wait_for(lambda: mp4.stat().st_size > size + 20_000, "the MP4 to grow", timeout=60)
                pids = archiver_pids(first.pid)
                assert len(pids) == 2, pids
                if phase == "finalising":
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)  # they cannot finish: finalising lasts
                        frozen.append(pid)
                    for archive in (individual, composed):
                        stopped = await asyncio.to_thread(client.stop_archive, archive.id)
                        assert stopped.status == "stopped"
                for archive in (individual, composed):
                    status = (await asyncio.to_thread(client.get_archive, archive.id)).status
                    assert status == ("stopped" if phase == "finalising" else "started"), status
                assert first.proc is not None
                first.proc.kill()  # SIGKILL: no shutdown path runs
                await asyncio.to_thread(first.proc.wait, 10)
            finally:
                await asyncio.wait_for(alice.disconnect(), 30)
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)  # orphans of the killed server, frozen by this test
        frozen.clear()
        # Archivers never outlive their server: they end once its channel is gone.
        await wait_for(
            lambda: not [p for p in pids if alive(p)], "the archivers to exit after the server", timeout=30
        )
        with ServeProcess(tmp_path, API_KEY, API_SECRET, args) as second:
            client = opentok.Client(API_KEY, API_SECRET, api_url=second.url)
            done_individual = await ended(second.url, individual.id)
            done_composed = await ended(second.url, composed.id)
            for done in (done_individual, done_composed):
                if phase == "finalising":
                    assert done["reason"] == "user initiated", done  # why it stopped, before the kill
                else:
                    assert done["reason"].startswith("the server restarted while the archive was recorded"), (
                        done
                    )
            # Both held media when the server died: each is delivered with what it recorded.
            assert done_individual["status"] == "available", done_individual
            assert done_composed["status"] == "available", done_composed
            _, files = unzip(await download(done_individual["url"]), individual.id)
            (data,) = files.values()
            frames, errors, name = decode_video(data)
            assert name == "matroska,webm" and errors == [] and len(frames) >= 30, (name, errors, len(frames))
            mp4 = Mp4(await download(done_composed["url"]))
            assert mp4.codecs == ["aac", "h264"] and (mp4.width, mp4.height) == (640, 480)
            assert mp4.duration >= 1.0, mp4.duration
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)


# -- mute and unmute in a composed archive ----------------------------------------------------------


async def test_a_composed_archive_follows_mute_and_unmute(archive_server: RunningServer) -> None:
    server = archive_server
    sid = server.session()
    alice, bob = Painted("alice", RED, ALICE_TONE), Painted("bob", BLUE, BOB_TONE)
    try:
        async with session_for(server, sid) as alice_session, session_for(server, sid) as bob_session:
            await publish(server, alice_session, alice)
            await publish(server, bob_session, bob)
            archive = await sdk(
                server,
                "start_archive",
                sid,
                output_mode=opentok.OutputModes.composed,
                resolution="640x480",
                layout={"type": "bestFit"},
            )
            clock = Clock((await archive_json(server, archive.id))["createdAt"])  # the MP4's time 0
            # Both in for 8 s (the archiver starts meanwhile); Alice's video off 4 s, on 4 s;
            # her audio off 4 s, on 4 s.
            await clock.until(8.0)
            video_off = clock.now()
            await alice.publisher.publish_video(False)
            await clock.until(video_off + 4.0)
            video_on = clock.now()
            await alice.publisher.publish_video(True)
            await clock.until(video_on + 4.0)
            audio_off = clock.now()
            await alice.publisher.publish_audio(False)
            await clock.until(audio_off + 4.0)
            audio_on = clock.now()
            await alice.publisher.publish_audio(True)
            await clock.until(audio_on + 4.0)
            stopping = clock.now()
            await sdk(server, "stop_archive", archive.id)
    finally:
        alice.close()
        bob.close()
    done = await ended(server.url, archive.id)
    assert done["status"] == "available", done
    mp4 = Mp4(await download(done["url"]))
    assert mp4.codecs == ["aac", "h264"] and (mp4.width, mp4.height) == (640, 480)
    assert abs(mp4.duration - stopping) < 1.0, (mp4.duration, stopping)

    left, right = (0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)

    def tiles(t: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
        frame = mp4.frame_at(t)
        return colour_of(frame, *left), colour_of(frame, *right)

    black = (16, 16, 16)
    timeline = [(round(t, 1), colour_of(frame, *left)) for t, frame in mp4.frames[::12]]
    first = next((t for t, colour in timeline if near(colour, RED)), None)
    assert first is not None and first < video_off - 1.5, ("Alice's first frame", first, timeline)
    for t in (video_off - 1.0, video_on + 2.0, stopping - 1.0):
        alice_tile, bob_tile = tiles(t)
        assert near(alice_tile, RED) and near(bob_tile, BLUE), (t, alice_tile, bob_tile)
    for t in (video_off + 1.5, video_on - 0.5):
        alice_tile, bob_tile = tiles(t)
        assert near(alice_tile, black, 30) and near(bob_tile, BLUE), ("video off", t, alice_tile, timeline)

    # Alice's tone is in the mix except while her audio is off; Bob's throughout.
    on = mp4.tone_share(video_on + 0.5, audio_off - 0.5, ALICE_TONE)
    off = mp4.tone_share(audio_off + 1.0, audio_on - 0.2, ALICE_TONE)
    back = mp4.tone_share(audio_on + 1.5, stopping - 0.5, ALICE_TONE)
    bob_while_off = mp4.tone_share(audio_off + 1.0, audio_on - 0.2, BOB_TONE)
    assert on > 0.15 and back > 0.15, (on, back)
    assert off < 0.01, f"Alice's tone while her audio is off: {off:.3f}"
    assert bob_while_off > 0.3, bob_while_off


# -- an archive started while a publisher is muted ---------------------------------------------------


async def test_an_archive_started_while_a_publisher_is_muted_records_it_once_unmuted(
    archive_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    """The archive starts while Alice's video and audio are off (her tracks are published,
    muted): once she turns them on, her red and her tone are in the file. A mute is a state of
    the stream, not a lack of tracks."""
    server = archive_server
    sid = server.session()
    alice = Painted("alice", RED, ALICE_TONE)
    try:
        async with session_for(server, sid) as session:
            stream_id = await publish(server, session, alice)
            await alice.publisher.publish_video(False)
            await alice.publisher.publish_audio(False)
            live = server.thread.server.config.app.state.archives.signalling.live_session(sid)
            (muted,) = [s.info() for s in live.announced_streams()]
            assert not (muted.has_video or muted.has_audio), muted  # the server's view of it
            archive = await sdk(server, "start_archive", sid, output_mode=opentok.OutputModes.individual)
            webm = tmp_path / "archives-work" / archive.id / f"{stream_id}.webm"
            await wait_for(
                lambda: webm.exists() and webm.stat().st_size > 2_000, "the file to start", timeout=40
            )
            clock = Clock(round(time.time() * 1000))
            await clock.until(2.0)
            unmuted = clock.now()
            await alice.publisher.publish_video(True)
            await alice.publisher.publish_audio(True)
            await clock.until(unmuted + 5.0)
            await sdk(server, "stop_archive", archive.id)
    finally:
        alice.close()
    done = await ended(server.url, archive.id)
    assert done["status"] == "available", done
    _, files = unzip(await download(done["url"]), archive.id)
    data = files[f"{stream_id}.webm"]
    with av.open(io.BytesIO(data)) as container:
        kinds = sorted(s.type for s in container.streams)
    assert kinds == ["audio", "video"], f"the muted stream's tracks were left out: {kinds}"
    frames, errors, _ = decode_video(data)
    assert errors == [], errors[:5]
    colours = [colour_of(f.to_ndarray(format="rgb24"), 0.2, 0.2, 0.8, 0.8) for f in frames]
    last = colours[-len(colours) // 4 :]
    assert last and all(near(c, RED) for c in last), f"after the unmute: {last[:5]}…"
    with av.open(io.BytesIO(data)) as container:
        chunks = [f.to_ndarray()[0] for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    tail = np.concatenate(chunks)[-2 * rate :].astype(np.float64)
    spectrum = np.abs(np.fft.rfft((tail - tail.mean()) * np.hanning(len(tail)))) ** 2
    freqs = np.fft.rfftfreq(len(tail), 1 / rate)
    share = float(spectrum[np.abs(freqs - ALICE_TONE) < 20].sum() / spectrum.sum())
    assert share > 0.3, f"Alice's tone after the unmute: {share:.0%} of the energy"


# -- a full disk ---------------------------------------------------------------------------------------


@pytest.fixture
def small_work_dir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """The data directory's ``archives-work`` (recordings in progress) as a 300 KiB tmpfs (the
    tests run as root)."""
    work = tmp_path / "archives-work"
    work.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(work)], check=True)
    try:
        yield work
    finally:
        subprocess.run(["umount", str(work)], check=True)


async def test_a_disk_filling_up_mid_recording_ends_the_archive_with_a_reason_not_the_call(
    tmp_path: pathlib.Path, small_work_dir: pathlib.Path
) -> None:
    """The recordings' working directory is a 300 KiB tmpfs (the tests run as root): it fills
    up while an individual archive records. The call goes on, the archive ends ``available``
    with what fit or ``failed``, with a reason saying so, and the server goes on serving."""
    work = small_work_dir
    with recording_server(tmp_path) as server:
        sid = server.session()
        seen = Recorder()
        async with session_for(server, sid) as alice, session_for(server, sid, role="subscriber") as bob:
            auto_subscribe(bob, seen)
            publisher = Publisher(
                "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
            )
            stream = await alice.publish(publisher)
            await media_flows(server, sid, stream.stream_id)
            archive = await sdk(server, "start_archive", sid, output_mode=opentok.OutputModes.individual)

            def full() -> bool:
                usage = os.statvfs(work)
                return usage.f_bavail * usage.f_frsize < 16 * 1024

            await wait_for(full, "the disk to fill up", timeout=60)
            before = len(seen.indices)
            await wait_for(lambda: len(seen.indices) >= before + 30, "bob to keep decoding", timeout=30)
            try:
                await sdk(server, "stop_archive", archive.id)
            except opentok.exceptions.ArchiveError:
                pass  # it had stopped by itself, on the failure
            done = await ended(server.url, archive.id)
            assert "disk" in done["reason"] or "space" in done["reason"], done
            assert alice.state.name == "CONNECTED" and bob.state.name == "CONNECTED"
            # The server goes on: its API answers, the call still flows.
            listed = await sdk(server, "list_archives", session_id=sid)
            assert [a.id for a in listed.items] == [archive.id]
            before = len(seen.indices)
            await wait_for(lambda: len(seen.indices) >= before + 30, "bob to keep decoding", timeout=30)
        if done["status"] == "available":
            _, files = unzip(await download(done["url"]), archive.id)
            frames, errors, _ = decode_video(files[f"{stream.stream_id}.webm"])
            assert frames and errors == [], errors[:5]
