"""The archives table on SQLite and PostgreSQL: written, updated, listed newest first; and the
server's archive lifecycle on PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib

import pytest

from salon.errors import ConflictError, InvalidRequestError
from salon.server.run import ServerThread
from salon.store import ArchiveRecord, Store
from tests.functional.test_archives import FileRecorder, Server, config, wait_status
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(300)


def record(n: int, session_id: str = "1_s", status: str = "started") -> ArchiveRecord:
    return ArchiveRecord(
        archive_id=f"{n:08d}-0000-0000-0000-000000000000",
        api_key="47000001",
        session_id=session_id,
        name=f"archive {n}",
        status=status,
        reason="",
        created_at=1_800_000_000_000 + n,
        updated_at=1_800_000_000_000 + n,
        stopped_at=None,
        duration=0,
        size=0,
        output_mode="composed",
        stream_mode="auto",
        has_audio=True,
        has_video=False,
        resolution="1280x720",
        layout='{"type": "bestFit"}',
        streams="[]",
        multi_archive_tag=None,
        location=None,
    )


async def check_archives(url: str) -> None:
    store = Store(url)
    await store.open()
    try:
        for n in range(5):
            await store.create_archive(record(n, session_id="1_a" if n % 2 else "1_b"))
        with pytest.raises(ConflictError):
            await store.create_archive(record(0))
        with pytest.raises(InvalidRequestError):
            await store.create_archive(_with(record(9), name="nul\x00"))
        total, items = await store.list_archives("47000001")
        assert total == 5 and [a.name for a in items] == [f"archive {n}" for n in (4, 3, 2, 1, 0)]
        total, items = await store.list_archives("47000001", session_id="1_a", offset=1, count=1)
        assert total == 2 and [a.name for a in items] == ["archive 1"]
        assert await store.list_archives("47000002") == (0, [])
        done = _with(record(2), status="available", size=1234, duration=61, location="x/archive.mp4")
        await store.update_archive(done)
        assert await store.get_archive(done.archive_id) == done
        assert await store.get_archive("nope") is None and await store.get_archive("a\x00") is None
        unfinished = await store.archives_in(("started", "paused", "stopped"))
        assert [a.archive_id for a in unfinished] == [record(n).archive_id for n in (0, 1, 3, 4)]
        old = await store.archives_in(("available",), created_before=1_800_000_000_002)
        assert old == []
        assert [a.archive_id for a in await store.archives_in(("available",), created_before=2**62)] == [
            done.archive_id
        ]
    finally:
        await store.close()
    store = Store(url)  # persisted
    await store.open()
    try:
        assert (await store.list_archives("47000001"))[0] == 5
    finally:
        await store.close()


def _with(value: ArchiveRecord, **changes: object) -> ArchiveRecord:
    return dataclasses.replace(value, **changes)  # type: ignore[arg-type]


async def test_archives_on_sqlite(tmp_path: pathlib.Path) -> None:
    await check_archives(f"sqlite:///{tmp_path / 'salon.sqlite3'}")


async def test_archives_on_postgresql(postgres_url: str) -> None:
    await check_archives(postgres_url)


async def test_the_archive_lifecycle_on_postgresql(tmp_path: pathlib.Path, postgres_url: str) -> None:
    """The server's archives on PostgreSQL: started, listed, stopped, available, deleted."""
    recorder = FileRecorder()
    settings = dataclasses.replace(config(tmp_path, recorder), database_url=postgres_url)
    with ServerThread(settings) as thread:
        server = Server(thread, recorder)
        sid = await asyncio.to_thread(server.session)
        alice = await server.join(sid)
        archive = await server.call("start_archive", sid, name="pg")
        await wait_status(server, archive.id, "paused")
        assert [a.id for a in (await server.call("list_archives", session_id=sid)).items] == [archive.id]
        await server.call("stop_archive", archive.id)
        available = await wait_status(server, archive.id, "available")
        assert available.size > 0 and available.name == "pg"
        await server.call("delete_archive", archive.id)
        assert (await server.call("get_archive", archive.id)).status == "deleted"
        await alice.close()
