"""The archive API through the official ``opentok`` SDK, against a real salon on 127.0.0.1.

The media side is a :class:`FileRecorder` defined here: it implements the recorder interface
(:class:`salon.archive.Recorder`) by writing, progressively, a line per thing it is told (the
streams it records, layouts), so each test checks what the control plane fed the recorder by
downloading the archive from its ``url``. Recording real media is the recorders' own tests'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import opentok
import pytest
from opentok.exceptions import ArchiveError, NotFoundError, RequestError

from salon.archive import (
    ArchiveConfig,
    Layout,
    RecordedStream,
    Recording,
    RecordingFailed,
    RecordingResult,
)
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from salon.store import ArchiveRecord, Store, database_url_for
from tests.conftest import API_KEY, API_SECRET
from tests.functional.test_callbacks import FAST, Receiver
from tests.functional.test_rest_api import auth_header
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(120)


class FileRecording:
    def __init__(
        self, archive: ArchiveRecord, streams: list[RecordedStream], directory: pathlib.Path
    ) -> None:
        name = "archive.zip" if archive.output_mode == "individual" else "archive.mp4"
        self.path = directory / name
        self.file = self.path.open("w")
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.write(f"start {archive.archive_id} {archive.output_mode} {archive.resolution}")
        for stream in streams:
            self.write(
                f"add {stream.stream_id} {stream.connection_data} {stream.has_audio} {stream.has_video}"
            )

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.file.write(line + "\n")
        self.file.flush()  # progressively: a crash leaves what was written

    async def add_stream(self, stream: RecordedStream) -> None:
        self.write(f"add {stream.stream_id} {stream.connection_data} {stream.has_audio} {stream.has_video}")

    async def remove_stream(self, stream_id: str) -> None:
        self.write(f"remove {stream_id}")

    async def set_layout(self, layout: Layout) -> None:
        self.write(f"layout {layout.type} {layout.stylesheet}")

    async def set_stream_classes(self, stream_id: str, classes: tuple[str, ...]) -> None:
        self.write(f"classes {stream_id} {' '.join(classes)}")

    async def stop(self) -> RecordingResult:
        self.write("stop")
        self.file.close()
        return RecordingResult((self.path,), self.path.stat().st_size, time.monotonic() - self.started)


class FileRecorder:
    """The recorder interface, without media (see the module's docstring)."""

    def __init__(self) -> None:
        self.recordings: dict[str, FileRecording] = {}
        self.failures: dict[str, Callable[[str], None]] = {}
        self.pad = 0  # bytes of padding each recording writes when it starts

    async def start(
        self,
        archive: ArchiveRecord,
        streams: list[RecordedStream],
        directory: pathlib.Path,
        on_failure: Callable[[str], None],
    ) -> Recording:
        recording = FileRecording(archive, streams, directory)
        if self.pad:
            recording.write("x" * self.pad)
        self.recordings[archive.archive_id] = recording
        self.failures[archive.archive_id] = on_failure
        return recording

    async def finalise(self, archive: ArchiveRecord, directory: pathlib.Path) -> RecordingResult:
        return await asyncio.to_thread(self._finalise, directory)

    @staticmethod
    def _finalise(directory: pathlib.Path) -> RecordingResult:
        files = sorted(directory.iterdir())
        if not files:
            raise RecordingFailed("no file was left to finalise")
        with files[0].open("a") as file:
            file.write("finalised\n")
        return RecordingResult((files[0],), files[0].stat().st_size, 1.0)


def config(data_dir: pathlib.Path, recorder: FileRecorder | None, **archives: Any) -> ServerConfig:
    recorders = (
        {} if recorder is None else {"composed": lambda media: recorder, "individual": lambda media: recorder}
    )
    callback_url = archives.pop("callback_url", None)
    return ServerConfig(
        port=0,
        data_dir=data_dir,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=0.5, heartbeat_timeout=2.0),
        media=False,
        callbacks=FAST,
        archive_recorders=recorders,
        archives=ArchiveConfig(**archives),
        callback_url=callback_url,
    )


class Server:
    def __init__(self, thread: ServerThread, recorder: FileRecorder) -> None:
        self.thread = thread
        self.recorder = recorder
        self.url = thread.url
        self.sdk = opentok.Client(API_KEY, API_SECRET, api_url=self.url)

    def session(self, **kwargs: Any) -> str:
        kwargs.setdefault("media_mode", opentok.MediaModes.routed)
        return str(self.sdk.create_session(**kwargs).session_id)

    async def join(self, session_id: str, data: str = "") -> WsClient:
        token = self.sdk.generate_token(session_id, role=opentok.Roles.publisher, data=data)
        return await WsClient.join(self.url, session_id, str(token))

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """An SDK call, in a thread (the SDK blocks; the test's clients keep reading)."""
        return await asyncio.to_thread(getattr(self.sdk, method), *args, **kwargs)


@contextlib.contextmanager
def running(
    data_dir: pathlib.Path, recorder: FileRecorder | None = None, **archives: Any
) -> Iterator[Server]:
    recorder = recorder if recorder is not None else FileRecorder()
    with ServerThread(config(data_dir, recorder, **archives)) as thread:
        yield Server(thread, recorder)


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Server]:
    with running(tmp_path, empty_timeout=1.0) as s:
        yield s


async def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def wait_status(server: Server, archive_id: str, *statuses: str, timeout: float = 30.0) -> Any:
    async def poll() -> Any:
        deadline = time.monotonic() + timeout
        while True:
            archive = await server.call("get_archive", archive_id)
            if archive.status in statuses:
                return archive
            if time.monotonic() > deadline:
                raise AssertionError(f"archive {archive_id} is {archive.status}, not {statuses}")
            await asyncio.sleep(0.05)

    return await poll()


async def publish(client: WsClient, name: str = "cam") -> str:
    reply = await client.request({"type": "publish", "name": name, "video_type": "camera"})
    return str(reply["stream"]["stream_id"])


# -- the whole life of an archive -------------------------------------------------------------


async def test_start_stop_get_list_download_and_delete_through_the_sdk(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid, data="alice")
    stream = await publish(alice)
    started = time.time()
    archive = await server.call("start_archive", sid, name="lesson 1", resolution="1280x720")
    assert (archive.status, archive.name, archive.session_id) == ("started", "lesson 1", sid)
    assert archive.output_mode == opentok.OutputModes.composed and archive.stream_mode == "auto"
    assert archive.resolution == "1280x720" and archive.has_audio and archive.has_video
    assert archive.partner_id == int(API_KEY) and archive.size == 0 and archive.duration == 0
    assert abs(archive.created_at.timestamp() - started) < 5 and archive.url is None
    # Every connection is told, in signalling.
    event = await alice.next("archive_started")
    assert event == {"type": "archive_started", "archive_id": archive.id, "name": "lesson 1"}
    # The recorder was given the published stream, with its connection data.
    recording = server.recorder.recordings[archive.id]
    assert f"add {stream} alice True True" in recording.lines

    got = await server.call("get_archive", archive.id)
    assert (got.id, got.status, got.name) == (archive.id, "started", "lesson 1")

    stopped = await server.call("stop_archive", archive.id)
    assert stopped.status == "stopped" and stopped.id == archive.id
    assert (await alice.next("archive_stopped"))["archive_id"] == archive.id
    available = await wait_status(server, archive.id, "available")
    assert available.url.startswith(server.url + "/v2/archive-download/" + archive.id)
    # The URL alone downloads the recording: no other credentials.
    r = httpx.get(available.url)
    assert r.status_code == 200, r.text
    assert r.content.decode().splitlines() == [*recording.lines]
    assert available.size == len(r.content)

    listed = await server.call("list_archives")
    assert listed.count == 1 and [a.id for a in listed.items] == [archive.id]

    await server.call("delete_archive", archive.id)
    assert (await server.call("get_archive", archive.id)).status == "deleted"
    assert httpx.get(available.url).status_code == 404  # the file is gone
    await server.call("delete_archive", archive.id)  # deleting a deleted archive: nothing to do
    await alice.close()


async def test_the_archive_json_has_every_field_the_sdks_read(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid)
    archive = await server.call("start_archive", sid, output_mode=opentok.OutputModes.individual)
    r = httpx.get(f"{server.url}/v2/project/{API_KEY}/archive/{archive.id}", headers=auth_header())
    body = r.json()
    for field in (
        "id status name reason sessionId projectId partnerId applicationId createdAt updatedAt duration "
        "size outputMode streamMode hasAudio hasVideo resolution streams url event"
    ).split():
        assert field in body, field
    assert body["event"] == "archive" and body["outputMode"] == "individual" and body["resolution"] is None
    assert isinstance(body["createdAt"], int) and body["createdAt"] > 1_700_000_000_000
    await alice.close()


async def test_list_is_newest_first_pages_and_filters_by_either_session_spelling(server: Server) -> None:
    first, second = await asyncio.gather(asyncio.to_thread(server.session), asyncio.to_thread(server.session))
    clients = [await server.join(first), await server.join(second)]
    ids = []
    for sid in (first, second, first):
        archive = await server.call("start_archive", sid, multi_archive_tag=f"t{len(ids)}")
        ids.append(archive.id)
        await asyncio.sleep(0.002)  # distinct createdAt (ms): the order is checked
    newest_first = list(reversed(ids))
    listed = await server.call("list_archives")
    assert listed.count == 3 and [a.id for a in listed.items] == newest_first
    page = await server.call("list_archives", offset=1, count=1)
    assert page.count == 3 and [a.id for a in page.items] == newest_first[1:2]
    of_first = await server.call("list_archives", session_id=first)
    assert [a.id for a in of_first.items] == [ids[2], ids[0]]
    url = f"{server.url}/v2/project/{API_KEY}/archive"
    r = httpx.get(url, params={"session_id": second, "count": 100}, headers=auth_header())
    assert r.status_code == 200 and [a["id"] for a in r.json()["items"]] == [ids[1]]
    for bad in ({"count": 0}, {"count": 1001}, {"offset": -1}, {"count": "x"}):
        r = httpx.get(url, params=bad, headers=auth_header())
        assert r.status_code == 400 and r.json()["message"], bad
    for client in clients:
        await client.close()


# -- errors, as OpenTok gives them ------------------------------------------------------------


async def test_start_errors(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    # Nobody connected: 400 with OpenTok's message.
    with pytest.raises(RequestError, match="No clients are actively connected"):
        await server.call("start_archive", sid)
    # Unknown session: 404.
    with pytest.raises(NotFoundError):
        await server.call("start_archive", "1_MX40NzAwMDAwMX5-unknown")
    alice = await server.join(sid)
    # A resolution with individual output: 400 (opentok refuses it before sending; vonage-video sends it).
    url = f"{server.url}/v2/project/{API_KEY}/archive"
    r = httpx.post(
        url,
        json={"sessionId": sid, "outputMode": "individual", "resolution": "640x480"},
        headers=auth_header(),
    )
    assert r.status_code == 400 and "resolution" in r.json()["message"]
    # A custom layout whose stylesheet is outside the documented subset: 400.
    for stylesheet in ("stream { color: red }", "div { width: 50% }", "stream { width: 50em }", "stream {"):
        with pytest.raises(RequestError, match="stylesheet"):
            await server.call("start_archive", sid, layout={"type": "custom", "stylesheet": stylesheet})
    # Bad bodies: 400 with a message, nothing started.
    for body in (
        {},
        {"sessionId": sid, "outputMode": "mixed"},
        {"sessionId": sid, "resolution": "1x1"},
        {"sessionId": sid, "layout": {"type": "grid"}},
        {"sessionId": sid, "streamMode": "sometimes"},
        {"sessionId": sid, "hasAudio": False, "hasVideo": False},
        {"sessionId": sid, "layout": {"type": "pip", "stylesheet": "stream {}"}},
    ):
        r = httpx.post(url, json=body, headers=auth_header())
        assert r.status_code == 400 and r.json()["message"], (body, r.text)
    r = httpx.post(url, content=b"{not json", headers={**auth_header(), "Content-Type": "application/json"})
    assert r.status_code == 400
    assert (await server.call("list_archives")).count == 0
    # A relayed session cannot be archived: 409.
    relayed = await asyncio.to_thread(server.session, media_mode=opentok.MediaModes.relayed)
    bob = await server.join(relayed)
    with pytest.raises(ArchiveError, match="relayed"):
        await server.call("start_archive", relayed)
    # Archived already: 409, unless with a distinct multiArchiveTag.
    first = await server.call("start_archive", sid, layout={"type": "custom", "stylesheet": "stream{}"})
    with pytest.raises(ArchiveError, match="multiArchiveTag"):
        await server.call("start_archive", sid)
    second = await server.call("start_archive", sid, multi_archive_tag="backup")
    with pytest.raises(ArchiveError):
        await server.call("start_archive", sid, multi_archive_tag="backup")
    assert second.id != first.id
    await alice.close()
    await bob.close()


async def test_stop_get_delete_errors(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid)
    for call in ("get_archive", "stop_archive", "delete_archive"):
        with pytest.raises(NotFoundError):
            await server.call(call, "00000000-0000-0000-0000-000000000000")
    archive = await server.call("start_archive", sid)
    # Deleting an archive that is not available: 409.
    with pytest.raises(RequestError) as refused:
        await server.call("delete_archive", archive.id)
    assert refused.value.args[1] == 409
    await server.call("stop_archive", archive.id)
    # Stopping one that is not started: 409.
    with pytest.raises(ArchiveError, match="not in started state"):
        await server.call("stop_archive", archive.id)
    await wait_status(server, archive.id, "available")
    # Another project's archive is unknown to this one.
    other = httpx.get(
        f"{server.url}/v2/project/47000002/archive/{archive.id}", headers=auth_header(key="47000002")
    )
    assert other.status_code == 403
    await alice.close()


# -- layouts and manual stream selection --------------------------------------------------------


async def test_set_layout_reaches_the_recorder_and_bad_layouts_are_refused(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid)
    stream = await publish(alice)
    archive = await server.call("start_archive", sid)
    stylesheet = "stream.instructor { position: absolute; width: 100%; height: 50%; }"
    await server.call("set_archive_layout", archive.id, "custom", stylesheet=stylesheet)
    url = f"{server.url}/v2/project/{API_KEY}/archive/{archive.id}/layout"
    r = httpx.put(
        url,
        json={"type": "custom", "stylesheet": ".focus { width: 100%; z-index: 2 }"},
        headers=auth_header(),
    )
    assert r.status_code == 200 and r.json()["layout"]["type"] == "custom"
    r = httpx.put(url, json={"type": "bestFit", "screenshareType": "pip"}, headers=auth_header())
    assert r.status_code == 200 and r.json()["layout"] == {"type": "bestFit", "screenshareType": "pip"}
    # A stream's class list changed through the REST API reaches the recording.
    r = httpx.put(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream",
        json={"items": [{"id": stream, "layoutClassList": ["focus", "big"]}]},
        headers=auth_header(),
    )
    assert r.status_code == 200, r.text
    lines = server.recorder.recordings[archive.id].lines
    assert f"classes {stream} focus big" in lines
    assert (
        f"layout custom {stylesheet}" in lines and "layout custom .focus { width: 100%; z-index: 2 }" in lines
    )
    assert "layout bestFit None" in lines
    for body in (
        {"type": "custom", "stylesheet": "stream { float: left }"},
        {"type": "grid"},
        {"type": "custom"},
    ):
        r = httpx.put(url, json=body, headers=auth_header())
        assert r.status_code == 400 and r.json()["message"], body
    await server.call("stop_archive", archive.id)
    r = httpx.put(url, json={"type": "pip"}, headers=auth_header())
    assert r.status_code == 409
    await alice.close()


async def test_manual_stream_mode_adds_and_removes_streams(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice, bob = await server.join(sid, data="alice"), await server.join(sid, data="bob")
    a, b = await publish(alice), await publish(bob)
    archive = await server.call("start_archive", sid, stream_mode=opentok.StreamModes.manual)
    assert archive.stream_mode == "manual" and archive.streams == []
    recording = server.recorder.recordings[archive.id]
    assert not any(line.startswith("add") for line in recording.lines)  # manual: nothing yet
    await server.call("add_archive_stream", archive.id, a, has_audio=True, has_video=False)
    await server.call("add_archive_stream", archive.id, b)
    got = await server.call("get_archive", archive.id)
    assert got.streams == [
        {"streamId": a, "hasAudio": True, "hasVideo": False},
        {"streamId": b, "hasAudio": True, "hasVideo": True},
    ]
    await server.call("remove_archive_stream", archive.id, a)
    assert recording.lines[-3:] == [f"add {a} alice True False", f"add {b} bob True True", f"remove {a}"]
    # An unknown stream: 404 (the SDK's generic error carries the status).
    with pytest.raises(RequestError) as refused:
        await server.call("add_archive_stream", archive.id, "no-such-stream")
    assert refused.value.args[1] == 404
    # An auto-mode archive takes no selection: 405, as OpenTok.
    auto = await server.call("start_archive", sid, multi_archive_tag="auto")
    with pytest.raises(RequestError) as refused:
        await server.call("add_archive_stream", auto.id, a)
    assert refused.value.args[1] == 405
    r = httpx.patch(
        f"{server.url}/v2/project/{API_KEY}/archive/{archive.id}/streams", json={}, headers=auth_header()
    )
    assert r.status_code == 400 and r.json()["message"]
    await alice.close()
    await bob.close()


# -- lifecycle ------------------------------------------------------------------------------------


async def test_auto_mode_follows_streams_pauses_while_nothing_is_published_and_tells_late_joiners(
    server: Server,
) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid, data="alice")
    archive = await server.call("start_archive", sid, name="n")
    # Nothing published: paused.
    await wait_status(server, archive.id, "paused")
    stream = await publish(alice)
    await wait_status(server, archive.id, "started")
    recording = server.recorder.recordings[archive.id]
    await wait_for("the stream recorded", lambda: f"add {stream} alice True True" in recording.lines)
    # A client joining while it records is told.
    bob = await server.join(sid, data="bob")
    assert (await bob.next("archive_started"))["archive_id"] == archive.id
    await alice.request({"type": "unpublish", "stream_id": stream})
    await wait_status(server, archive.id, "paused")
    assert f"remove {stream}" in recording.lines
    await alice.close()
    await bob.close()


async def test_an_archive_stops_when_the_session_has_been_empty_and_at_its_maximum_duration(
    tmp_path: pathlib.Path,
) -> None:
    with running(tmp_path, empty_timeout=0.5, max_duration=3.0) as server:
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid)
        await publish(alice)
        empty = await server.call("start_archive", sid)
        await alice.close()
        stopped = await wait_status(server, empty.id, "available", "stopped")
        assert (await server.call("get_archive", empty.id)).status in ("stopped", "available")
        body = httpx.get(
            f"{server.url}/v2/project/{API_KEY}/archive/{stopped.id}", headers=auth_header()
        ).json()
        assert body["reason"] == "session ended"
        # With a client there all along, the maximum duration (3 s) stops it.
        alice = await server.join(sid)
        await publish(alice)
        long = await server.call("start_archive", sid)
        bob = await server.join(sid)
        await bob.close()
        await wait_status(server, long.id, "available", timeout=30)
        body = httpx.get(f"{server.url}/v2/project/{API_KEY}/archive/{long.id}", headers=auth_header()).json()
        assert body["reason"] == "maximum duration exceeded" and 2 <= body["duration"] <= 10
        await alice.close()


async def test_an_always_archived_session_starts_its_archive_when_media_first_flows(server: Server) -> None:
    r = httpx.post(
        server.url + "/session/create",
        data={"archiveMode": "always", "archiveName": "weekly", "archiveResolution": "1280x720"},
        headers=auth_header(),
    )
    sid = r.json()[0]["session_id"]
    alice = await server.join(sid)
    assert (await server.call("list_archives", session_id=sid)).count == 0  # connected, nothing flows
    stream = await publish(alice)
    archive = (
        await wait_for("the automatic archive", lambda: server.sdk.list_archives(session_id=sid).items)
    )[0]
    assert (archive.name, archive.resolution, archive.status) == ("weekly", "1280x720", "started")
    assert (await alice.next("archive_started"))["name"] == "weekly"
    assert any(stream in line for line in server.recorder.recordings[archive.id].lines)
    await alice.close()  # empty for empty_timeout (1 s): it stops
    assert (await wait_status(server, archive.id, "available")).status == "available"


async def test_a_recording_that_fails_fails_the_archive_with_its_reason(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid)
    archive = await server.call("start_archive", sid)
    server.thread.run_coroutine(_fail(server, archive.id, "the archiver exited with signal 9")).result(5)
    # The recording salvaged its file: available, with the failure as its reason.
    done = await wait_status(server, archive.id, "available", "failed")
    body = httpx.get(f"{server.url}/v2/project/{API_KEY}/archive/{done.id}", headers=auth_header()).json()
    assert body["reason"] == "the archiver exited with signal 9" and body["status"] == "available"
    await alice.close()


async def _fail(server: Server, archive_id: str, reason: str) -> None:
    server.recorder.failures[archive_id](reason)


async def test_a_mode_without_a_recorder_fails_its_archives_with_a_reason(tmp_path: pathlib.Path) -> None:
    with ServerThread(config(tmp_path, None)) as thread:
        server = Server(thread, FileRecorder())
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid)
        archive = await server.call("start_archive", sid)
        await server.call("stop_archive", archive.id)
        failed = await wait_status(server, archive.id, "failed")
        body = httpx.get(
            f"{server.url}/v2/project/{API_KEY}/archive/{failed.id}", headers=auth_header()
        ).json()
        assert body["reason"] == "this server has no recorder for composed archives" and body["url"] is None
        await alice.close()


# -- callbacks ----------------------------------------------------------------------------------


async def test_every_status_change_is_posted_to_the_archive_callback_url(tmp_path: pathlib.Path) -> None:
    receiver = Receiver()
    try:
        with running(tmp_path, callback_url=receiver.url) as server:
            sid = await asyncio.to_thread(server.session)
            alice = await server.join(sid)
            archive = await server.call("start_archive", sid, name="cb")
            await wait_status(server, archive.id, "paused")
            await publish(alice)
            await wait_status(server, archive.id, "started")
            await server.call("stop_archive", archive.id)
            await wait_status(server, archive.id, "available")

            def archive_bodies() -> list[dict[str, Any]]:
                return [b for b in receiver.delivered() if b.get("event") == "archive"]

            await wait_for("5 archive callbacks", lambda: len(archive_bodies()) >= 5)
            bodies = archive_bodies()
            assert [b["status"] for b in bodies] == ["started", "paused", "started", "stopped", "available"]
            for body in bodies:
                assert (body["id"], body["sessionId"], body["name"]) == (archive.id, sid, "cb")
                assert body["partnerId"] == int(API_KEY) and isinstance(body["createdAt"], int)
            assert bodies[3]["reason"] == "user initiated"
            assert bodies[-1]["url"].startswith(server.url) and bodies[-1]["size"] > 0
            assert all(b["url"] is None for b in bodies[:-1])
            assert httpx.get(bodies[-1]["url"]).status_code == 200
            await alice.close()
    finally:
        receiver.close()


# -- storage, download, retention, restart ----------------------------------------------------------


async def test_download_urls_are_signed_and_expire(server: Server) -> None:
    sid = await asyncio.to_thread(server.session)
    alice = await server.join(sid)
    archive = await server.call("start_archive", sid)
    await server.call("stop_archive", archive.id)
    url = (await wait_status(server, archive.id, "available")).url
    assert httpx.get(url).status_code == 200
    tampered = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert httpx.get(tampered).status_code == 403
    base, query = url.split("?")
    params = dict(p.split("=") for p in query.split("&"))
    later = f"{base}?expires={int(params['expires']) + 3600}&signature={params['signature']}"
    assert httpx.get(later).status_code == 403  # the expiry is signed
    past = httpx.get(f"{base}?expires={int(time.time()) - 1}&signature={params['signature']}")
    assert past.status_code == 403
    assert httpx.get(base).status_code == 400  # no signature at all
    assert 590 <= int(params["expires"]) - time.time() <= 601  # 10 minutes
    await alice.close()


async def test_archives_expire_after_the_retention_period(tmp_path: pathlib.Path) -> None:
    with running(tmp_path, retention=6.0) as server:  # long enough to see it available first
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid)
        archive = await server.call("start_archive", sid)
        await server.call("stop_archive", archive.id)
        url = (await wait_status(server, archive.id, "available")).url
        assert httpx.get(url).status_code == 200
        expired = await wait_status(server, archive.id, "expired", timeout=30)
        assert expired.url is None
        assert httpx.get(url).status_code == 404
        assert not (tmp_path / "archives" / archive.id).exists()
        await alice.close()


async def test_a_restart_finalises_unfinished_archives(tmp_path: pathlib.Path) -> None:
    # What a server killed mid-recording leaves: rows still started (or stopped), and the
    # recordings' working files.
    store = Store(database_url_for(tmp_path))
    await store.open()
    now = int(time.time() * 1000)
    await store.create_project("default", api_key=API_KEY, api_secret=API_SECRET)
    await store.create_session(
        API_KEY, "1_s", media_mode="routed", archive_mode="manual", location="", e2ee=False
    )
    rows = {}
    for archive_id, status, has_file in (
        ("11111111-1111-1111-1111-111111111111", "started", True),
        ("22222222-2222-2222-2222-222222222222", "stopped", True),
        ("33333333-3333-3333-3333-333333333333", "paused", False),
    ):
        rows[archive_id] = ArchiveRecord(
            archive_id,
            API_KEY,
            "1_s",
            None,
            status,
            "",
            now,
            now,
            None,
            0,
            0,
            "composed",
            "auto",
            True,
            True,
            "640x480",
            '{"type": "bestFit"}',
            "[]",
            None,
            None,
        )
        await store.create_archive(rows[archive_id])
        if has_file:
            work = tmp_path / "archives-work" / archive_id
            work.mkdir(parents=True)
            (work / "archive.mp4").write_text("recorded until the crash\n")
    await store.close()
    with running(tmp_path) as server:
        first = await wait_status(server, "11111111-1111-1111-1111-111111111111", "available")
        assert httpx.get(first.url).text == "recorded until the crash\nfinalised\n"
        second = await wait_status(server, "22222222-2222-2222-2222-222222222222", "available")
        assert second.size == len("recorded until the crash\nfinalised\n")
        third = await wait_status(server, "33333333-3333-3333-3333-333333333333", "failed")
        body = httpx.get(
            f"{server.url}/v2/project/{API_KEY}/archive/{third.id}", headers=auth_header()
        ).json()
        assert "restarted" in body["reason"]
        body = httpx.get(
            f"{server.url}/v2/project/{API_KEY}/archive/{first.id}", headers=auth_header()
        ).json()
        assert body["reason"] == "the server restarted while the archive was recorded"


@pytest.fixture
def tiny_archive_dir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """The data directory's archive directory as a tmpfs of 64 KiB (the tests run as root)."""
    small = tmp_path / "archives"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=True)


async def test_a_full_disk_fails_the_archive_not_the_server(
    tmp_path: pathlib.Path, tiny_archive_dir: pathlib.Path
) -> None:
    # A recording of 1 MiB does not fit in the archive directory.
    small = tiny_archive_dir
    recorder = FileRecorder()
    recorder.pad = 1 << 20
    with running(tmp_path, recorder) as server:
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid)
        archive = await server.call("start_archive", sid)
        await server.call("stop_archive", archive.id)
        failed = await wait_status(server, archive.id, "failed")
        body = httpx.get(f"{server.url}/v2/project/{API_KEY}/archive/{failed.id}", headers=auth_header())
        assert body.json()["reason"] == "the disk is full"
        assert not (small / archive.id).exists(), "a partial copy was left"
        # The server and its session go on: a smaller archive is stored.
        recorder.pad = 0
        again = await server.call("start_archive", sid)
        await server.call("stop_archive", again.id)
        assert (await wait_status(server, again.id, "available")).status == "available"
        await alice.close()


async def test_the_python_sdk_raises_archive_started_and_archive_stopped(server: Server) -> None:
    from salon.client import ArchiveStarted, ArchiveStopped, Event, Session

    sid = await asyncio.to_thread(server.session)
    token = server.sdk.generate_token(sid, role=opentok.Roles.publisher)
    seen: list[Event] = []
    async with Session(sid, str(token), server.url) as session:
        session.on(ArchiveStarted, seen.append)
        session.on(ArchiveStopped, seen.append)
        archive = await server.call("start_archive", sid, name="sdk")
        await wait_for("ArchiveStarted", lambda: seen)
        await server.call("stop_archive", archive.id)
        await wait_for("ArchiveStopped", lambda: len(seen) == 2)
    assert seen == [ArchiveStarted(archive.id, "sdk"), ArchiveStopped(archive.id, "sdk")]


async def test_vonage_video_drives_archives_over_https(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vonage-video`` (strict pydantic models, ``session_id`` in lists, 409 as
    InvalidArchiveStateError) with an application's RS256 credentials, over HTTPS."""
    from vonage import Auth, HttpClientOptions, Vonage
    from vonage_video import (
        AddStreamRequest,
        ComposedLayout,
        CreateArchiveRequest,
        ListArchivesFilter,
        SessionOptions,
        TokenOptions,
    )
    from vonage_video.errors import InvalidArchiveStateError

    from salon.server.tls import self_signed_certificate
    from salon.tokens import new_rsa_key_pair

    cert, key = self_signed_certificate(tmp_path)
    private_key, public_key = new_rsa_key_pair()
    store = Store(database_url_for(tmp_path))
    await store.open()
    application_id = (await store.create_application("archives", public_key)).api_key
    await store.close()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    recorder = FileRecorder()
    settings = dataclasses.replace(config(tmp_path, recorder), tls_cert=cert, tls_key=key)
    with ServerThread(settings) as thread:
        options = HttpClientOptions(video_host=thread.url.removeprefix("https://"), timeout=20)
        video = Vonage(Auth(application_id=application_id, private_key=private_key), options).video
        sid = (await asyncio.to_thread(video.create_session, SessionOptions(media_mode="routed"))).session_id
        token = video.generate_client_token(TokenOptions(session_id=sid, role="publisher")).decode()
        alice = await WsClient.join(thread.url, sid, token, ssl=ssl.create_default_context(cafile=str(cert)))
        stream = await publish(alice)
        request = CreateArchiveRequest(
            session_id=sid,
            name="vv",
            stream_mode="manual",
            resolution="1280x720",
            layout=ComposedLayout(type="pip"),
        )
        archive = await asyncio.to_thread(video.start_archive, request)
        assert (archive.status, archive.name, archive.session_id, archive.application_id) == (
            "started",
            "vv",
            sid,
            application_id,
        )
        await asyncio.to_thread(video.add_stream_to_archive, archive.id, AddStreamRequest(stream_id=stream))
        changed = await asyncio.to_thread(
            video.change_archive_layout,
            archive.id,
            ComposedLayout(type="custom", stylesheet="stream { width: 50% }"),
        )
        assert changed.id == archive.id and [s.stream_id for s in changed.streams or []] == [stream]
        await asyncio.to_thread(video.remove_stream_from_archive, archive.id, stream)
        items, count, _ = await asyncio.to_thread(video.list_archives, ListArchivesFilter(session_id=sid))
        assert count == 1 and [a.id for a in items] == [archive.id]
        stopped = await asyncio.to_thread(video.stop_archive, archive.id)
        assert stopped.status == "stopped"
        with pytest.raises(InvalidArchiveStateError):
            await asyncio.to_thread(video.stop_archive, archive.id)
        deadline = time.monotonic() + 30
        while (got := await asyncio.to_thread(video.get_archive, archive.id)).status != "available":
            assert time.monotonic() < deadline, got.status
            await asyncio.sleep(0.05)
        assert got.url is not None and got.size and got.size > 0
        await asyncio.to_thread(video.delete_archive, archive.id)
        assert (await asyncio.to_thread(video.get_archive, archive.id)).status == "deleted"
        await alice.close()


async def test_a_server_killed_mid_recording_fails_or_finishes_its_archives_on_restart(
    tmp_path: pathlib.Path,
) -> None:
    """``kill -9`` of ``salon serve`` while a (composed) archive records with nobody
    publishing: after the restart it has ended, ``available`` (the black picture its archiver
    composed) or ``failed``, with the restart as its reason, never left ``started``; one
    stopped before the kill has ended too. (Archives of published media through a restart:
    tests/e2e/client/test_archive_robustness.py.)"""
    from tests.serveproc import ServeProcess

    # With media (salon serve records through archiver processes; without media an archive
    # fails at once: there is nothing to record from).
    with ServeProcess(tmp_path, API_KEY, API_SECRET, ["--workers", "1"]) as first:
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=first.url)
        sid = str(
            (await asyncio.to_thread(sdk.create_session, media_mode=opentok.MediaModes.routed)).session_id
        )
        alice = await WsClient.join(first.url, sid, str(sdk.generate_token(sid)))
        recording = await asyncio.to_thread(sdk.start_archive, sid, name="killed")
        stopped = await asyncio.to_thread(sdk.start_archive, sid, multi_archive_tag="b")
        await asyncio.to_thread(sdk.stop_archive, stopped.id)
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no shutdown path runs
        await asyncio.to_thread(first.proc.wait, 10)
        await alice.close()
    with ServeProcess(tmp_path, API_KEY, API_SECRET, ["--workers", "1"]) as second:
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=second.url)
        for archive_id in (recording.id, stopped.id):
            deadline = time.monotonic() + 30
            while (archive := await asyncio.to_thread(sdk.get_archive, archive_id)).status not in (
                "available",
                "failed",
            ):
                assert archive.status in ("started", "stopped"), archive.status
                assert time.monotonic() < deadline, archive.status
                await asyncio.sleep(0.05)
        body = httpx.get(f"{second.url}/v2/project/{API_KEY}/archive/{recording.id}", headers=auth_header())
        assert body.json()["reason"].startswith("the server restarted"), body.json()
        assert body.json()["name"] == "killed"


async def test_a_server_shutting_down_stops_and_stores_its_archives(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as server:
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid)
        archive = await server.call("start_archive", sid)
        await alice.close()
    with running(tmp_path) as server:
        done = await server.call("get_archive", archive.id)
        assert done.status == "available" and done.size > 0
        body = httpx.get(
            f"{server.url}/v2/project/{API_KEY}/archive/{archive.id}", headers=auth_header()
        ).json()
        assert body["reason"] == "the server shut down"
        assert httpx.get(done.url).status_code == 200
