"""A throwaway ``redis-server`` for the cluster tests.

It listens only on 127.0.0.1 on a free port, keeps nothing on disk (no RDB snapshots, no
append-only file; its working directory is a temporary one) and is stopped at the end. If the
binary is missing the tests fail, they are never skipped: ``scripts/test`` installs the Debian
package ``redis-server`` (and keeps its own service stopped).

The server itself is :mod:`salon.bench.infra`'s (``salon bench signalling --nodes`` uses it
too); this module holds the fixtures. Use them by importing them into a test module::

    from tests.redis import redis_url_fixture, redis_server_fixture  # noqa: F401
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from salon.bench.infra import RedisError, RedisServer, running_redis

__all__ = ["RedisServer", "redis_server_fixture", "redis_url_fixture", "running_redis"]


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A throwaway server for one test; the test FAILS if it cannot start."""
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.fail("redis-py is missing: pip install -e '.[test,cluster]' (scripts/test does this)")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_redis())
        except RedisError as exc:
            pytest.fail(str(exc))
        yield server


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of an empty throwaway server."""
    return redis_server.url
