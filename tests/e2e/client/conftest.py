"""Fixtures for the client SDK end-to-end tests: the real server (media on) on 127.0.0.1."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server


@pytest.fixture
def media_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """The ``server`` fixture's server with a generous heartbeat: the SDK clients encode and
    decode video on the test's own event loop, which a loaded 2-core machine can stall for
    longer than the default fixture's 2 s timeout."""
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)
