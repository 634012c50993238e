"""The store's schema is versioned (Alembic): a database made before that, with rows, upgrades in place.

The starting points are what the code of commit 59568f9 (the last unversioned store) made: a
SQLite file it wrote (``tests/data/store-main-59568f9.sqlite3``) and, for PostgreSQL, the DDL
it emitted with the same rows (``…postgresql.sql``), loaded into a throwaway cluster.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from salon.store import Store, migrations
from salon.store.store import metadata
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(300)

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
SESSIONS = {
    "1_MX40NzAwMDAwMX5-session0": ("47000001", "routed", "manual", "", False),
    "1_MX40NzAwMDAwMX5-session1": ("47000001", "relayed", "manual", "10.0.0.1", False),
    "1_MX40NzAwMDAwMX5-session2": ("47000002", "routed", "always", "", True),
}


def schema_state(connection: sa.Connection) -> tuple[str | None, list[object]]:
    """The revision the database is at, and how its tables differ from the store's metadata."""
    context = MigrationContext.configure(connection)
    return context.get_current_revision(), compare_metadata(context, metadata)


async def check_upgraded(url: str, new_session_id: str) -> None:
    store = Store(url)
    await store.open()
    try:
        projects = {p.api_key: p for p in await store.list_projects()}
        assert set(projects) == {"47000001", "47000002"}
        assert projects["47000001"].api_secret == "3f1c0e6a9b5d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
        assert projects["47000001"].name == "first" and projects["47000001"].created_at == 1796331888037
        assert projects["47000002"].api_secret == "0123456789abcdef0123456789abcdef"
        for session_id, (api_key, media_mode, archive_mode, location, e2ee) in SESSIONS.items():
            record = await store.get_session(session_id)
            assert record is not None, session_id
            assert (record.api_key, record.media_mode, record.archive_mode, record.location, record.e2ee) == (
                api_key,
                media_mode,
                archive_mode,
                location,
                e2ee,
            )
        assert await store.count_sessions("47000001") == 2
        # Still writable after the upgrade.
        await store.create_session(
            "47000002", new_session_id, media_mode="routed", archive_mode="manual", location="", e2ee=False
        )
    finally:
        await store.close()
    engine = create_async_engine(Store(url).url)
    async with engine.connect() as conn:
        revision, differences = await conn.run_sync(schema_state)
    await engine.dispose()
    assert revision == migrations.head()
    assert differences == [], "the newest migration and the store's tables disagree"


async def test_a_sqlite_database_of_the_unversioned_store_upgrades_in_place(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "salon.sqlite3"
    shutil.copy(DATA / "store-main-59568f9.sqlite3", path)
    await check_upgraded(f"sqlite:///{path}", "1_new")
    await check_upgraded(f"sqlite:///{path}", "1_newer")  # opening again changes nothing


async def test_a_postgresql_database_of_the_unversioned_store_upgrades_in_place(postgres_url: str) -> None:
    engine = create_async_engine(Store(postgres_url).url)
    script = (DATA / "store-main-59568f9.postgresql.sql").read_text()
    sql = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    async with engine.begin() as conn:
        for statement in filter(None, (s.strip() for s in sql.split(";"))):
            await conn.exec_driver_sql(statement)
    await engine.dispose()
    await check_upgraded(postgres_url, "1_new")
    await check_upgraded(postgres_url, "1_newer")


async def test_a_new_database_is_created_at_the_newest_revision(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    store = Store(url)
    await store.open()
    await store.close()
    engine = create_async_engine(Store(url).url)
    async with engine.connect() as conn:
        revision, differences = await conn.run_sync(schema_state)
    await engine.dispose()
    assert revision == migrations.head() and differences == []
