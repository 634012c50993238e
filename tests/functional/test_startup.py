"""Which project a server starts with: ``SALON_API_KEY``/``SALON_API_SECRET`` or the stored one."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time

import httpx
import opentok
import pytest

from salon.errors import SalonError
from salon.server.app import ensure_project
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.store import Project, Store, database_url_for

KEY = "46000002"
SECRET = "a" * 20 + "0123456789abcdefghij"
OTHER_SECRET = "b" * 20 + "9876543210zyxwvutsrq"


def _config(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, secret: str) -> ServerConfig:
    monkeypatch.setenv("SALON_API_KEY", KEY)
    monkeypatch.setenv("SALON_API_SECRET", secret)
    return ServerConfig.from_env(port=0, data_dir=tmp_path, media=False)


def test_the_environment_project_is_created_silently_and_serves(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    announced: list[str] = []
    config = _config(tmp_path, monkeypatch, SECRET)
    with ServerThread(config, announce=announced.append) as server:
        client = opentok.Client(KEY, SECRET, api_url=server.url)
        session_id = client.create_session().session_id
        assert client.list_streams(session_id).count == 0
    assert announced == []  # the operator chose the secret: nothing is printed
    with ServerThread(config, announce=announced.append) as server:  # the same again: fine
        assert opentok.Client(KEY, SECRET, api_url=server.url).list_streams(session_id).count == 0
    assert announced == []


async def test_a_known_key_with_another_secret_is_refused_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        created = await ensure_project(store, ServerConfig(api_key=KEY, api_secret=SECRET), print)
        assert (created.api_key, created.api_secret) == (KEY, SECRET)
        with pytest.raises(SalonError) as info:
            await ensure_project(store, ServerConfig(api_key=KEY, api_secret=OTHER_SECRET), print)
        assert KEY in info.value.message and "another secret" in info.value.message
        assert SECRET not in info.value.message and OTHER_SECRET not in info.value.message
        assert await store.get_project(KEY) == created
        assert [p.api_key for p in await store.list_projects()] == [KEY]
    finally:
        await store.close()


async def test_nodes_starting_at_once_on_one_database_share_the_environment_project(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cluster nodes started together all find the project missing; one creates it, the others
    take it rather than fail on the duplicate key."""
    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        stored = store.get_project
        looked = 0

        async def get_project(api_key: str) -> Project | None:
            nonlocal looked
            looked += 1
            return None if looked <= 3 else await stored(api_key)  # the three nodes' first looks

        monkeypatch.setattr(store, "get_project", get_project)
        config = ServerConfig(api_key=KEY, api_secret=SECRET)
        projects = await asyncio.gather(*(ensure_project(store, config, print) for _ in range(3)))
        assert {(p.api_key, p.api_secret) for p in projects} == {(KEY, SECRET)}
        assert [p.api_key for p in await store.list_projects()] == [KEY]
    finally:
        await store.close()


def test_serve_refuses_to_start_with_another_secret_for_a_known_key(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
    command = [
        sys.executable,
        "-m",
        "salon",
        "serve",
        "--port",
        "0",
        "--no-media",
        "--data-dir",
        str(tmp_path),
    ]

    def serve(secret: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "SALON_API_KEY": KEY, "SALON_API_SECRET": secret},
        )

    def url_of(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("salon serving on "):
                return line.split()[-1]
            assert line, "the server exited"
        raise AssertionError("the server did not start")

    proc = serve(SECRET)
    try:
        url = url_of(proc)
        assert opentok.Client(KEY, SECRET, api_url=url).create_session().session_id
    finally:
        proc.terminate()
        first_out, first_err = proc.communicate(timeout=15)
    assert "SALON_API_SECRET=" not in first_out and SECRET not in first_out + first_err

    refused = serve(OTHER_SECRET)
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1
    # One clear line, not a start-up traceback.
    assert f"salon: error: project {KEY} (SALON_API_KEY) exists with another secret" in err
    assert "Traceback" not in err
    assert "salon serving on" not in out
    assert SECRET not in out + err and OTHER_SECRET not in out + err

    proc = serve(SECRET)  # the stored project is intact
    try:
        url = url_of(proc)
        assert httpx.get(url + "/health").status_code == 200
        assert opentok.Client(KEY, SECRET, api_url=url).create_session().session_id
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
