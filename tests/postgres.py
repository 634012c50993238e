"""A throwaway PostgreSQL cluster for the tests that prove the store works on PostgreSQL.

The cluster is created with the Debian server binaries (``/usr/lib/postgresql/*/bin``) in a
temporary directory, listens only on 127.0.0.1 on a free port, and is stopped and deleted at
the end of the test session. Under root (as in CI) it runs as the ``postgres`` system user,
since ``initdb`` and ``postgres`` refuse to run as root.

Only the ``salon`` role may connect over TCP (trust, database ``salon``); the superuser
``postgres`` connects over the Unix socket in the temporary directory. If the binaries are
missing the tests fail, they are never skipped: ``scripts/test`` installs ``postgresql``.

The cluster itself is :mod:`salon.bench.infra`'s (``salon bench signalling --nodes`` uses it
too); this module holds the fixtures. Use them by importing them into a test module::

    from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterator

import pytest

from salon.bench.infra import PostgresCluster, PostgresError, free_port, running_postgres

__all__ = [
    "PostgresCluster",
    "free_port",
    "postgres_cluster_fixture",
    "postgres_url_fixture",
    "running_postgres",
]


@pytest.fixture(scope="session", name="postgres_cluster")
def postgres_cluster_fixture() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the whole test session; the tests FAIL if it cannot start."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.fail("asyncpg is missing: pip install -e '.[test,postgres]' (scripts/test does this)")
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_postgres())
        except PostgresError as exc:
            pytest.fail(str(exc))
        yield cluster


@pytest.fixture(name="postgres_url")
def postgres_url_fixture(postgres_cluster: PostgresCluster) -> str:
    """``postgresql://salon@127.0.0.1:PORT/salon``, an empty database for each test."""
    try:
        postgres_cluster.reset_database()
    except PostgresError as exc:
        pytest.fail(str(exc))
    return postgres_cluster.url


def upgraded(url: str) -> str:
    """``url``, its database brought to the newest schema here (as a node's first start would):
    nodes started at once (:func:`tests.serveproc.start_all` calls this) then all find it ready."""
    from salon.store.store import Store

    async def upgrade() -> None:
        store = Store(url)
        try:
            await store.open()
        finally:
            await store.close()

    # In a thread of its own: the caller may be a fixture of a test with its own event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, upgrade()).result()
    return url
