"""``salon serve --database-url`` (a real process) and ``salon session create --media-mode ...
--e2ee`` (``main()`` in the test process), on SQLite (a file named by its URL, not in
``--data-dir``) and on the tests' throwaway PostgreSQL cluster.

The sessions the CLI creates are read back from the database the URL names (media mode and
E2EE as asked), and a server started on that URL accepts clients into them.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import opentok
import pytest

from salon.cli import main
from salon.store import Store
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(90)

ENV = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        (tmp_path / "elsewhere").mkdir()
        return f"sqlite:///{tmp_path / 'elsewhere' / 'named-by-url.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def sqlite_file(url: str) -> pathlib.Path:
    return pathlib.Path(url.removeprefix("sqlite:///"))


async def salon(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``salon ARGS`` in this process (its own event loop, on a thread); returns its output."""
    capsys.readouterr()
    assert await asyncio.to_thread(main, list(args)) == 0
    return capsys.readouterr().out


def serve(*args: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "salon", "serve", "--port", "0", "--no-media", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:  # EOF: the server exited
            break
        lines.append(line)
        if line.startswith("salon serving on "):
            return proc, line.split()[-1], lines
    proc.kill()
    proc.wait()
    raise AssertionError(f"the server did not start: {lines}")


@pytest.fixture
def stopping() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


async def stored(url: str, session_id: str) -> tuple[str, bool, str]:
    store = Store(url)
    await store.open()
    try:
        record = await store.get_session(session_id)
    finally:
        await store.close()
    assert record is not None, f"{session_id} is not in {url}"
    return record.media_mode, record.e2ee, record.api_key


def no_database_in(data_dir: pathlib.Path) -> bool:
    """With ``--database-url`` the data directory holds no database: at most the local archive
    storage (``archives/`` with its download-signing key, ``archives-work/``), which
    ``--archive-storage s3://…`` moves elsewhere."""
    return not data_dir.exists() or {p.name for p in data_dir.iterdir()} <= {"archives", "archives-work"}


async def test_serve_and_session_create_use_the_database_url(
    database_url: str,
    tmp_path: pathlib.Path,
    stopping: list[subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SALON_DATABASE_URL", raising=False)
    data_dir = tmp_path / "data-dir"
    where = ("--database-url", database_url, "--data-dir", str(data_dir))

    # The first start creates the project in the database the URL names.
    proc, url, lines = serve(*where)
    stopping.append(proc)
    key = next(line.split("=")[1].strip() for line in lines if "SALON_API_KEY=" in line)
    secret = next(line.split("=")[1].strip() for line in lines if "SALON_API_SECRET=" in line)
    assert httpx.get(url + "/health").status_code == 200
    assert no_database_in(data_dir), "the server kept a database in --data-dir despite --database-url"
    if database_url.startswith("sqlite"):
        assert sqlite_file(database_url).is_file()
    rest = opentok.Client(key, secret, api_url=url)
    over_rest = rest.create_session(media_mode=opentok.MediaModes.relayed).session_id
    assert await stored(database_url, over_rest) == ("relayed", False, key)

    # The CLI writes sessions into the same database, with the options asked for.
    relayed = (await salon(capsys, "session", "create", "--media-mode", "relayed", "--e2ee", *where)).strip()
    routed = (await salon(capsys, "session", "create", "--media-mode", "routed", *where)).strip()
    assert await stored(database_url, relayed) == ("relayed", True, key)
    assert await stored(database_url, routed) == ("routed", False, key)
    assert no_database_in(data_dir)

    # The running server knows them (it reads the same database): clients join.
    for session_id in (relayed, routed):
        token = str(rest.generate_token(session_id))
        client = await WsClient.join(url, session_id, token)
        await client.close()
        assert client.connected is not None and client.connected["session_id"] == session_id
