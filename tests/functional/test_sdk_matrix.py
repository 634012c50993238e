"""The official server SDKs, unmodified, against a real salon on 127.0.0.1 over HTTPS.

One server (``--tls self-signed``'s certificate, trusted by each SDK the way a user would:
``REQUESTS_CA_BUNDLE`` for the Python SDKs, ``NODE_EXTRA_CA_CERTS`` for Node) and four SDKs:

* ``opentok`` 3.15.0 for Python, with an API key and secret;
* ``opentok`` 2.23.2 for Node (``npm ci``), with an API key and secret;
* the same Node SDK in its Vonage mode, with an application id and private key;
* ``vonage`` 4.9.1 with ``vonage-video`` 1.6.1, with an application id and private key.

Each creates a session and tokens that connect over wss, lists and gets streams, signals all
and one, mutes one and all, forces a disconnect, and is refused (403) with bad credentials; and
drives an archive's life (start, get, list, stop, stop again refused, get until available,
download from its url, delete). The server's recorder is the archive tests' ``FileRecorder``
(the control plane's side; recording real media is tests/e2e/client/test_archive_*.py's).
(``opentok`` for Python in its Vonage mode always calls video.api.vonage.com: it cannot be
pointed at a server, see docs/rest-api.md.)
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import opentok
import pytest
from opentok.exceptions import ArchiveError, AuthError, RequestError

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.server.tls import self_signed_certificate
from salon.store import Store, database_url_for
from salon.tokens import new_rsa_key_pair
from tests.conftest import API_KEY, API_SECRET
from tests.functional.test_archives import FileRecorder
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(180)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_DRIVER = ROOT / "tests" / "sdk" / "opentok_node.js"


class Driver(Protocol):
    """What the matrix asks of each SDK; every call blocks (run it in a thread)."""

    def create_session(self) -> str: ...
    def token(self, session_id: str, role: str, data: str, layout: list[str]) -> str: ...
    def list_streams(self, session_id: str) -> list[dict[str, Any]]: ...
    def get_stream(self, session_id: str, stream_id: str) -> dict[str, Any]: ...
    def signal(self, session_id: str, type_: str, data: str, connection_id: str | None = None) -> None: ...
    def force_disconnect(self, session_id: str, connection_id: str) -> None: ...
    def mute_stream(self, session_id: str, stream_id: str) -> None: ...
    def mute_all(self, session_id: str, excluded: list[str]) -> None: ...
    def refused(self) -> list[str]:
        """With bad credentials: create a session and list streams; what each call raised."""
        ...

    def start_archive(self, session_id: str, name: str) -> Archived: ...
    def get_archive(self, archive_id: str) -> Archived: ...
    def list_archives(self, session_id: str) -> tuple[list[str], int]:
        """The IDs of the session's archives (newest first) and the count."""
        ...

    def stop_archive(self, archive_id: str) -> Archived: ...
    def stop_refused(self, archive_id: str) -> str:
        """Stopping an archive that is not started: what the SDK raised."""
        ...

    def delete_archive(self, archive_id: str) -> None: ...


@dataclass(frozen=True)
class Archived:
    """What every SDK's archive object says, in one shape."""

    id: str
    status: str
    name: str
    session_id: str
    size: int
    url: str | None


# -- the SDKs ------------------------------------------------------------------------------


class PythonOpenTok:
    def __init__(self, url: str, key: str, secret: str) -> None:
        self.url, self.key, self.secret = url, key, secret
        self.sdk = opentok.Client(key, secret, api_url=url)

    def create_session(self) -> str:
        return str(self.sdk.create_session(media_mode=opentok.MediaModes.routed).session_id)

    def token(self, session_id: str, role: str, data: str, layout: list[str]) -> str:
        return str(
            self.sdk.generate_token(
                session_id, role=opentok.Roles(role), data=data, initial_layout_class_list=layout
            )
        )

    def list_streams(self, session_id: str) -> list[dict[str, Any]]:
        return [vars(s) for s in self.sdk.list_streams(session_id).items]

    def get_stream(self, session_id: str, stream_id: str) -> dict[str, Any]:
        return vars(self.sdk.get_stream(session_id, stream_id))

    def signal(self, session_id: str, type_: str, data: str, connection_id: str | None = None) -> None:
        self.sdk.send_signal(session_id, {"type": type_, "data": data}, connection_id)

    def force_disconnect(self, session_id: str, connection_id: str) -> None:
        self.sdk.force_disconnect(session_id, connection_id)

    def mute_stream(self, session_id: str, stream_id: str) -> None:
        self.sdk.mute_stream(session_id, stream_id)

    def mute_all(self, session_id: str, excluded: list[str]) -> None:
        self.sdk.mute_all(session_id, excluded)

    def refused(self) -> list[str]:
        bad = opentok.Client(self.key, "f" * 40, api_url=self.url)
        errors = []
        try:
            bad.create_session()
        except RequestError as exc:  # the SDK turns its 403 AuthError into this
            errors.append(str(exc))
        try:
            bad.list_streams(self.create_session())
        except AuthError as exc:  # raised for 403 only (401 is a plain RequestError)
            errors.append(f"AuthError: {exc}")
        return errors

    @staticmethod
    def _archived(archive: Any) -> Archived:
        return Archived(
            archive.id, archive.status, archive.name, archive.session_id, archive.size, archive.url
        )

    def start_archive(self, session_id: str, name: str) -> Archived:
        return self._archived(self.sdk.start_archive(session_id, name=name))

    def get_archive(self, archive_id: str) -> Archived:
        return self._archived(self.sdk.get_archive(archive_id))

    def list_archives(self, session_id: str) -> tuple[list[str], int]:
        listed = self.sdk.list_archives(session_id=session_id)
        return [a.id for a in listed.items], int(listed.count)

    def stop_archive(self, archive_id: str) -> Archived:
        return self._archived(self.sdk.stop_archive(archive_id))

    def stop_refused(self, archive_id: str) -> str:
        try:
            self.sdk.stop_archive(archive_id)
        except ArchiveError as exc:
            return f"ArchiveError: {exc}"
        raise AssertionError("stopping a stopped archive was accepted")

    def delete_archive(self, archive_id: str) -> None:
        self.sdk.delete_archive(archive_id)


class NodeOpenTok:
    def __init__(
        self, url: str, key: str, secret: str | None, private_key_file: pathlib.Path | None, ca: pathlib.Path
    ):
        self.url, self.key, self.secret, self.private_key_file, self.ca = (
            url,
            key,
            secret,
            private_key_file,
            ca,
        )
        self.vonage_mode = private_key_file is not None

    def run(
        self, *ops: tuple[str, dict[str, Any]], secret: str | None = None, key_file: str | None = None
    ) -> list[Any]:
        request: dict[str, Any] = {"apiKey": self.key, "apiUrl": self.url}
        if key_file or self.private_key_file:
            request["privateKeyFile"] = key_file or str(self.private_key_file)
        else:
            request["secret"] = secret or self.secret
        request["ops"] = [{"op": op, "args": args} for op, args in ops]
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(self.ca)}
        result = subprocess.run(
            ["node", str(NODE_DRIVER), json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["vonageMode"] is self.vonage_mode, out  # the SDK picked the intended mode
        return list(out["results"])

    def one(self, op: str, **args: Any) -> Any:
        (result,) = self.run((op, args))
        assert "error" not in result, (op, result)
        return result["ok"]

    def create_session(self) -> str:
        return str(self.one("createSession"))

    def token(self, session_id: str, role: str, data: str, layout: list[str]) -> str:
        return str(self.one("generateToken", sessionId=session_id, role=role, data=data, layout=layout))

    def list_streams(self, session_id: str) -> list[dict[str, Any]]:
        return list(self.one("listStreams", sessionId=session_id))

    def get_stream(self, session_id: str, stream_id: str) -> dict[str, Any]:
        # opentok 2.23.2's getStream is broken against any server that answers, as OpenTok
        # does, with Content-Type: application/json: its api() parses the body, then Stream()
        # calls JSON.parse on the parsed object. Pin that, and read the stream from the list.
        (result,) = self.run(("getStream", {"sessionId": session_id, "streamId": stream_id}))
        assert result == {"error": '"[object Object]" is not valid JSON'}, result
        (stream,) = [s for s in self.list_streams(session_id) if s["id"] == stream_id]
        return dict(stream)

    def signal(self, session_id: str, type_: str, data: str, connection_id: str | None = None) -> None:
        self.one("signal", sessionId=session_id, connectionId=connection_id, type=type_, data=data)

    def force_disconnect(self, session_id: str, connection_id: str) -> None:
        self.one("forceDisconnect", sessionId=session_id, connectionId=connection_id)

    def mute_stream(self, session_id: str, stream_id: str) -> None:
        self.one("forceMuteStream", sessionId=session_id, streamId=stream_id)

    def mute_all(self, session_id: str, excluded: list[str]) -> None:
        self.one("forceMuteAll", sessionId=session_id, excluded=excluded)

    def refused(self) -> list[str]:
        session_id = self.create_session()
        ops = (
            ("createSession", {}),
            ("listStreams", {"sessionId": session_id}),
            ("authStatus", {"sessionId": session_id}),
        )
        if self.private_key_file is None:
            results = self.run(*ops, secret="f" * 40)
        else:
            other = self.private_key_file.with_name("other.private.key")
            results = self.run(*ops, key_file=str(other))
        # The SDK maps 401 and 403 to AuthError('Invalid API key or secret'): the status of
        # the same request, with the same kind of JWT, says which it was.
        assert results[2] == {"ok": 403}, results
        (good,) = self.run(("authStatus", {"sessionId": session_id}))
        assert good == {"ok": 200}, good
        return [
            str(r.get("error")) for r in results[:2] if "Invalid API key or secret" in str(r.get("error"))
        ]

    @staticmethod
    def _archived(archive: dict[str, Any]) -> Archived:
        return Archived(
            archive["id"],
            archive["status"],
            archive["name"],
            archive["sessionId"],
            archive["size"],
            archive["url"],
        )

    def start_archive(self, session_id: str, name: str) -> Archived:
        return self._archived(self.one("startArchive", sessionId=session_id, options={"name": name}))

    def get_archive(self, archive_id: str) -> Archived:
        return self._archived(self.one("getArchive", archiveId=archive_id))

    def list_archives(self, session_id: str) -> tuple[list[str], int]:
        listed = self.one("listArchives", options={"sessionId": session_id})
        return [a["id"] for a in listed["items"]], int(listed["count"])

    def stop_archive(self, archive_id: str) -> Archived:
        return self._archived(self.one("stopArchive", archiveId=archive_id))

    def stop_refused(self, archive_id: str) -> str:
        (result,) = self.run(("stopArchive", {"archiveId": archive_id}))
        assert "error" in result, result
        return str(result["error"])

    def delete_archive(self, archive_id: str) -> None:
        self.one("deleteArchive", archiveId=archive_id)


class PythonVonage:
    def __init__(self, host: str, application_id: str, private_key: str, other_key: str) -> None:
        from vonage import Auth, HttpClientOptions, Vonage

        self.host, self.application_id, self.other_key = host, application_id, other_key
        options = HttpClientOptions(video_host=host, timeout=20)
        self.video = Vonage(Auth(application_id=application_id, private_key=private_key), options).video

    def create_session(self) -> str:
        from vonage_video import SessionOptions

        return str(self.video.create_session(SessionOptions(media_mode="routed")).session_id)

    def token(self, session_id: str, role: str, data: str, layout: list[str]) -> str:
        from vonage_video import TokenOptions

        options = TokenOptions(
            session_id=session_id, role=role, connection_data=data, initial_layout_class_list=layout
        )
        return self.video.generate_client_token(options).decode()

    def list_streams(self, session_id: str) -> list[dict[str, Any]]:
        return [s.model_dump() for s in self.video.list_streams(session_id)]

    def get_stream(self, session_id: str, stream_id: str) -> dict[str, Any]:
        return self.video.get_stream(session_id, stream_id).model_dump()

    def signal(self, session_id: str, type_: str, data: str, connection_id: str | None = None) -> None:
        from vonage_video import SignalData

        if connection_id is None:  # the SDK's pydantic check refuses an explicit None
            self.video.send_signal(session_id, SignalData(type=type_, data=data))
        else:
            self.video.send_signal(session_id, SignalData(type=type_, data=data), connection_id)

    def force_disconnect(self, session_id: str, connection_id: str) -> None:
        self.video.disconnect_client(session_id, connection_id)

    def mute_stream(self, session_id: str, stream_id: str) -> None:
        self.video.mute_stream(session_id, stream_id)

    def mute_all(self, session_id: str, excluded: list[str]) -> None:
        self.video.mute_all_streams(session_id, excluded)

    def refused(self) -> list[str]:
        from vonage import Auth, HttpClientOptions, Vonage
        from vonage_http_client import ForbiddenError  # 403; a 401 is AuthenticationError

        session_id = self.create_session()
        options = HttpClientOptions(video_host=self.host, timeout=20)
        bad = Vonage(Auth(application_id=self.application_id, private_key=self.other_key), options).video
        errors = []
        for call in (bad.create_session, lambda: bad.list_streams(session_id)):
            try:
                call()
            except ForbiddenError as exc:
                errors.append(f"ForbiddenError: {exc}")
        return errors

    @staticmethod
    def _archived(archive: Any) -> Archived:
        return Archived(
            archive.id, archive.status, archive.name, archive.session_id, archive.size, archive.url
        )

    def start_archive(self, session_id: str, name: str) -> Archived:
        from vonage_video import CreateArchiveRequest

        return self._archived(
            self.video.start_archive(CreateArchiveRequest(session_id=session_id, name=name))
        )

    def get_archive(self, archive_id: str) -> Archived:
        return self._archived(self.video.get_archive(archive_id))

    def list_archives(self, session_id: str) -> tuple[list[str], int]:
        from vonage_video import ListArchivesFilter

        items, count, _ = self.video.list_archives(ListArchivesFilter(session_id=session_id))
        return [a.id for a in items], int(count)

    def stop_archive(self, archive_id: str) -> Archived:
        return self._archived(self.video.stop_archive(archive_id))

    def stop_refused(self, archive_id: str) -> str:
        from vonage_video.errors import InvalidArchiveStateError

        try:
            self.video.stop_archive(archive_id)
        except InvalidArchiveStateError as exc:
            return f"InvalidArchiveStateError: {exc}"
        raise AssertionError("stopping a stopped archive was accepted")

    def delete_archive(self, archive_id: str) -> None:
        self.video.delete_archive(archive_id)


# -- the server and the SDKs set up ----------------------------------------------------------


async def _add_application(data_dir: pathlib.Path, public_key: str) -> str:
    store = Store(database_url_for(data_dir))
    await store.open()
    try:
        return (await store.create_application("matrix", public_key)).api_key
    finally:
        await store.close()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Driver]]:
    if shutil.which("node") is None or not (ROOT / "node_modules" / "opentok").is_dir():
        pytest.fail("the Node SDK is missing: run `npm ci` (scripts/test does)")
    data_dir = tmp_path_factory.mktemp("matrix")
    cert, key = self_signed_certificate(data_dir)
    recorder = FileRecorder()
    config = ServerConfig(
        port=0,
        data_dir=data_dir,
        api_key=API_KEY,
        api_secret=API_SECRET,
        media=False,
        tls_cert=cert,
        tls_key=key,
        archive_recorders={"composed": lambda media: recorder, "individual": lambda media: recorder},
    )
    with ServerThread(config) as server:
        private_key, public_key = new_rsa_key_pair()
        other_key, _ = new_rsa_key_pair()
        application_id = asyncio.run(_add_application(data_dir, public_key))
        key_file = data_dir / f"{application_id}.private.key"
        key_file.write_text(private_key)
        (data_dir / "other.private.key").write_text(other_key)
        host = server.url.removeprefix("https://")
        yield {
            "python-opentok": PythonOpenTok(server.url, API_KEY, API_SECRET),
            "node-opentok": NodeOpenTok(server.url, API_KEY, API_SECRET, None, cert),
            "node-opentok-vonage-mode": NodeOpenTok(server.url, application_id, None, key_file, cert),
            "python-vonage-video": PythonVonage(host, application_id, private_key, other_key),
        }


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch, matrix: dict[str, Driver]) -> ssl.SSLContext:
    """The Python SDKs (requests) trust the server's certificate through REQUESTS_CA_BUNDLE."""
    node = matrix["node-opentok"]
    assert isinstance(node, NodeOpenTok)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(node.ca))
    return ssl.create_default_context(cafile=str(node.ca))


SDKS = ["python-opentok", "node-opentok", "node-opentok-vonage-mode", "python-vonage-video"]


@pytest.mark.parametrize("sdk", SDKS)
async def test_sdk_drives_a_session(sdk: str, matrix: dict[str, Driver], trust: ssl.SSLContext) -> None:
    driver = matrix[sdk]
    url = matrix_url(matrix)
    sid = await asyncio.to_thread(driver.create_session)
    token_a = await asyncio.to_thread(driver.token, sid, "moderator", "name=Ann", ["focus", "big"])
    token_b = await asyncio.to_thread(driver.token, sid, "publisher", "name=Bob", [])
    a = await WsClient.join(url, sid, token_a, ssl=trust)
    b = await WsClient.join(url, sid, token_b, ssl=trust)
    try:
        assert a.connected is not None and a.connected["role"] == "moderator"
        assert a.connected["connection"]["data"] == "name=Ann"
        assert b.connection_id is not None
        sa = (await a.request({"type": "publish", "name": "ann"}))["stream"]["stream_id"]
        sb = (await b.request({"type": "publish", "name": "bob"}))["stream"]["stream_id"]

        streams = await asyncio.to_thread(driver.list_streams, sid)
        assert sorted(s["name"] for s in streams) == ["ann", "bob"], streams
        got = await asyncio.to_thread(driver.get_stream, sid, sa)
        assert got["id"] == sa and got["name"] == "ann", got
        layout = got.get("layoutClassList", got.get("layout_class_list"))
        assert layout == ["focus", "big"], got

        await asyncio.to_thread(driver.signal, sid, "chat", "to all")
        for client in (a, b):
            event = await client.next("signal")
            assert (event["signal_type"], event["data"]) == ("chat", "to all")
        await asyncio.to_thread(driver.signal, sid, "dm", "to bob", b.connection_id)
        assert (await b.next("signal"))["data"] == "to bob"

        await asyncio.to_thread(driver.mute_stream, sid, sa)
        assert (await a.next("mute_forced"))["stream_id"] == sa
        await asyncio.to_thread(driver.mute_all, sid, [sa])
        assert (await b.next("mute_forced"))["stream_id"] == sb

        await asyncio.to_thread(driver.force_disconnect, sid, b.connection_id)
        assert (await b.next("session_disconnected"))["reason"] == "forceDisconnected"
        destroyed = await a.next("connection_destroyed")
        assert destroyed["connection_id"] == b.connection_id
        # Only ann's stream is left, as the SDK sees it.
        assert [s["id"] for s in await asyncio.to_thread(driver.list_streams, sid)] == [sa]
        # Only the signal to all reached ann.
        assert [m["data"] for m in a.messages if m["type"] == "signal"] == []
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("sdk", SDKS)
def test_sdk_with_bad_credentials_is_refused(
    sdk: str, matrix: dict[str, Driver], trust: ssl.SSLContext
) -> None:
    errors = matrix[sdk].refused()
    assert len(errors) == 2, errors


@pytest.mark.parametrize("sdk", SDKS)
async def test_sdk_drives_an_archive(sdk: str, matrix: dict[str, Driver], trust: ssl.SSLContext) -> None:
    driver = matrix[sdk]
    url = matrix_url(matrix)
    sid = await asyncio.to_thread(driver.create_session)
    token = await asyncio.to_thread(driver.token, sid, "publisher", "name=Ann", [])
    ann = await WsClient.join(url, sid, token, ssl=trust)
    try:
        await ann.request({"type": "publish", "name": "ann"})
        started = await asyncio.to_thread(driver.start_archive, sid, f"matrix {sdk}")
        assert (started.status, started.name, started.session_id) == ("started", f"matrix {sdk}", sid)
        assert started.url is None and started.size == 0
        assert (await ann.next("archive_started"))["archive_id"] == started.id
        got = await asyncio.to_thread(driver.get_archive, started.id)
        assert (got.id, got.status) == (started.id, "started")
        assert await asyncio.to_thread(driver.list_archives, sid) == ([started.id], 1)
        stopped = await asyncio.to_thread(driver.stop_archive, started.id)
        assert (stopped.id, stopped.status) == (started.id, "stopped")
        assert (await ann.next("archive_stopped"))["archive_id"] == started.id
        refused = await asyncio.to_thread(driver.stop_refused, started.id)
        assert "not in started state" in refused.lower() or "InvalidArchiveStateError" in refused, refused
        deadline = time.monotonic() + 30
        while (done := await asyncio.to_thread(driver.get_archive, started.id)).status != "available":
            assert done.status == "stopped", done
            assert time.monotonic() < deadline, f"the archive is still {done.status} after 30 s"
            await asyncio.sleep(0.05)
        assert done.url is not None and done.size > 0
        async with httpx.AsyncClient(verify=trust) as http:
            download = await http.get(done.url)  # the signed URL alone: no credentials
        assert download.status_code == 200 and len(download.content) == done.size
        assert f"start {started.id}" in download.text
        await asyncio.to_thread(driver.delete_archive, started.id)
        assert (await asyncio.to_thread(driver.get_archive, started.id)).status == "deleted"
        async with httpx.AsyncClient(verify=trust) as http:
            assert (await http.get(done.url)).status_code == 404
    finally:
        await ann.close()


def matrix_url(matrix: dict[str, Driver]) -> str:
    driver = matrix["python-opentok"]
    assert isinstance(driver, PythonOpenTok)
    return driver.url
