from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import opentok
import pytest

from salon.archive.recorders import media_recorders
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig

API_KEY = "47000001"
API_SECRET = "3f1c0e6a9b5d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"


@dataclass
class RunningServer:
    url: str
    api_key: str
    api_secret: str
    thread: ServerThread

    @property
    def sdk(self) -> opentok.Client:
        return opentok.Client(self.api_key, self.api_secret, api_url=self.url)

    def session(self) -> str:
        return str(self.sdk.create_session(media_mode=opentok.MediaModes.routed).session_id)

    def token(self, session_id: str, role: str = "publisher", **kwargs: object) -> str:
        return str(self.sdk.generate_token(session_id, role=opentok.Roles(role), **kwargs))


def start_server(data_dir: pathlib.Path, **signalling: float) -> ServerThread:
    # A broken link destroys its connection at once unless a test asks for a grace period
    # (the resume tests do): the tests of what others see when a client vanishes stay quick.
    signalling.setdefault("reconnect_grace", 0)
    config = ServerConfig(
        port=0,
        data_dir=data_dir,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(**signalling),  # type: ignore[arg-type]
        workers=1,  # one media worker process keeps CI light
        # Tests join through the demo endpoint from one address many times; its rate limit
        # has its own tests (tests/functional/test_rest_limits.py).
        demo_rate_burst=1000,
    )
    return ServerThread(config)


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=2.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@pytest.fixture
def grace_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """For resume tests with media: a generous heartbeat (SDK clients decode video on the
    test's own loop) and the default 30 s grace period for a broken link."""
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0, reconnect_grace=30) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@pytest.fixture
def short_grace_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """A grace period of 1 s: a link lost longer falls back to a new connection."""
    with start_server(
        tmp_path, heartbeat_interval=0.5, heartbeat_timeout=15.0, reconnect_grace=1.0
    ) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@contextlib.contextmanager
def recording_server(data_dir: pathlib.Path) -> Iterator[RunningServer]:
    """The real server with ``salon serve``'s recorders (archiver processes)."""
    config = ServerConfig(
        port=0,
        data_dir=data_dir,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=1,
        demo_rate_burst=1000,
        archive_recorders=media_recorders(),
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)
