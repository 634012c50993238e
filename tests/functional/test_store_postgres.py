"""The store and the real server on PostgreSQL: a throwaway cluster on 127.0.0.1 (tests/postgres.py).

The same behaviours as tests/unit/test_store.py (which runs on SQLite), then the server driven
by the official SDK across a restart on the same database. These tests fail, and are never
skipped, when the PostgreSQL server binaries are missing.
"""

from __future__ import annotations

from typing import Any

import httpx
import opentok
import pytest
from opentok.exceptions import OpenTokException

from salon.errors import ConflictError, InvalidRequestError, NotFoundError
from salon.ids import encode_session_id
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.store import Store
from tests.conftest import API_KEY, API_SECRET
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.unit.test_store import check_callback_outbox

# The first test also starts the cluster (initdb and all) on a possibly slow, shared machine.
pytestmark = pytest.mark.timeout(300)


def test_postgresql_urls_use_asyncpg(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://salon@127.0.0.1:")
    assert Store(postgres_url).url.startswith("postgresql+asyncpg://salon@127.0.0.1:")


async def test_projects_and_sessions_persist_across_reopen(postgres_url: str) -> None:
    store = Store(postgres_url)
    await store.open()
    project = await store.create_project("demo")
    await store.create_session(
        project.api_key, "1_abc", media_mode="routed", archive_mode="manual", location="", e2ee=True
    )
    await store.close()

    reopened = Store(postgres_url)
    await reopened.open()  # the tables exist already
    assert await reopened.get_project(project.api_key) == project
    record = await reopened.get_session("1_abc")
    assert record is not None and record.api_key == project.api_key and record.media_mode == "routed"
    assert record.e2ee is True and record.archive_mode == "manual" and record.location == ""
    assert isinstance(record.created_at, int) and record.created_at > 1_600_000_000_000
    assert [p.api_key for p in await reopened.list_projects()] == [project.api_key]
    assert await reopened.count_sessions(project.api_key) == 1
    assert await reopened.count_sessions("nope") == 0
    await reopened.close()


async def test_duplicate_and_invalid_projects_are_refused(postgres_url: str) -> None:
    store = Store(postgres_url)
    await store.open()
    await store.create_project(api_key="1234", api_secret="s" * 20)
    with pytest.raises(ConflictError):
        await store.create_project(api_key="1234", api_secret="s" * 20)
    with pytest.raises(InvalidRequestError):
        await store.create_project(api_key="12~34", api_secret="s" * 20)
    with pytest.raises(InvalidRequestError):
        await store.create_project(api_key="5678", api_secret="short")
    assert await store.get_project("nope") is None
    assert await store.get_session("nope") is None
    # The failed insert was rolled back: the store still works on the same connection pool.
    await store.create_session(
        "1234", "1_x", media_mode="relayed", archive_mode="manual", location="", e2ee=False
    )
    with pytest.raises(ConflictError):
        await store.create_session(
            "1234", "1_x", media_mode="relayed", archive_mode="manual", location="", e2ee=False
        )
    assert [p.api_key for p in await store.list_projects()] == ["1234"]
    assert await store.count_sessions("1234") == 1
    await store.close()


async def test_values_postgresql_cannot_hold_are_invalid_requests_not_server_errors(
    postgres_url: str,
) -> None:
    # VARCHAR(n) overflow and NUL characters are database errors on PostgreSQL (SQLite stores them).
    store = Store(postgres_url)
    await store.open()
    with pytest.raises(InvalidRequestError):
        await store.create_project("n" * 201)
    with pytest.raises(InvalidRequestError):
        await store.create_project("a\x00b")
    with pytest.raises(InvalidRequestError):
        await store.create_project(api_key="1234", api_secret="s" * 129)
    project = await store.create_project("n" * 200, api_key="1234", api_secret="s" * 128)
    options: dict[str, Any] = dict(media_mode="routed", archive_mode="manual", e2ee=False)
    with pytest.raises(InvalidRequestError):
        await store.create_session(project.api_key, "1_long", location="l" * 65, **options)
    with pytest.raises(InvalidRequestError):
        await store.create_session(project.api_key, "1_" + "x" * 254, location="", **options)
    with pytest.raises(InvalidRequestError):
        await store.create_session(project.api_key, "1_\x00", location="", **options)
    await store.create_session(project.api_key, "1_" + "x" * 253, location="l" * 64, **options)
    assert await store.get_project("12\x0034") is None
    assert await store.get_session("1_\x00") is None
    assert await store.count_sessions("12\x0034") == 0
    assert await store.count_sessions(project.api_key) == 1
    assert [p.name for p in await store.list_projects()] == ["n" * 200]
    await store.close()


def test_server_sessions_persist_in_postgresql_across_a_restart(postgres_url: str) -> None:
    config = ServerConfig(port=0, database_url=postgres_url, api_key=API_KEY, api_secret=API_SECRET)
    with ServerThread(config) as server:
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=server.url)
        session_id = str(sdk.create_session(media_mode=opentok.MediaModes.routed).session_id)
        assert sdk.list_streams(session_id).count == 0

    # A fresh server (empty caches) on the same database: the session is read from PostgreSQL.
    with ServerThread(config) as server:
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=server.url)
        assert sdk.list_streams(session_id).count == 0
        # The SDK turns a 404 into an empty list: check the answer itself was a 200 ...
        answer = httpx.get(sdk.endpoints.get_stream_url(session_id), headers=sdk.get_json_headers())
        assert answer.status_code == 200, answer.text
        assert answer.json()["count"] == 0
        sdk.send_signal(session_id, {"type": "chat", "data": "still here"})  # 204
        # ... and that an unknown session of the same project is refused (404).
        unknown = encode_session_id(API_KEY)
        answer = httpx.get(sdk.endpoints.get_stream_url(unknown), headers=sdk.get_json_headers())
        assert answer.status_code == 404, answer.text
        # (opentok 3.15 means SignalingError for a 404, but a 404 response is falsy in requests.)
        with pytest.raises(OpenTokException, match="404"):
            sdk.send_signal(unknown, {"type": "chat", "data": "nobody"})
        # A NUL in the session ID (which PostgreSQL cannot even compare) is unknown too, not a 500.
        answer = httpx.get(sdk.endpoints.get_stream_url("1_%00"), headers=sdk.get_json_headers())
        assert answer.status_code == 404, answer.text


async def test_deleting_and_rotating_on_postgresql(postgres_url: str) -> None:
    store = Store(postgres_url)
    await store.open()
    try:
        project = await store.create_project("rotating")
        session_id = encode_session_id(project.api_key, "")
        await store.create_session(
            project.api_key, session_id, media_mode="routed", archive_mode="manual", location="", e2ee=False
        )
        rotated = await store.rotate_secret(project.api_key, grace=60)
        assert rotated.valid_secrets() == (rotated.api_secret, project.api_secret)
        await store.delete_project(project.api_key)  # its sessions first: the foreign key holds
        assert await store.get_project(project.api_key) is None
        assert await store.get_session(session_id) is None
        with pytest.raises(NotFoundError):
            await store.delete_project(project.api_key)
    finally:
        await store.close()


async def test_the_callback_outbox_on_postgresql(postgres_url: str) -> None:
    store = Store(postgres_url)
    await store.open()
    try:
        await check_callback_outbox(store)
    finally:
        await store.close()
