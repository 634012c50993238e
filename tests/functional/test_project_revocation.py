"""``salon project delete`` and ``rotate-secret`` take effect in the running server (issue 9, defect 9).

The server and the CLI are separate processes sharing the store, as in production: the store
is the truth, and the server's cache of projects must not outlive it by more than a moment.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import opentok
import pytest

from tests.conftest import API_KEY, API_SECRET
from tests.functional.test_rest_api import auth_header
from tests.serveproc import ServeProcess
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(180)

#: How long a change made by the CLI may take to reach the server (its cache lives 1 s).
TAKES_EFFECT_WITHIN = 3.0


def cli(data_dir: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
    return subprocess.run(
        [sys.executable, "-m", "salon", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def cli_json(data_dir: pathlib.Path, *args: str) -> dict[str, Any]:
    done = cli(data_dir, *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Waits for ``condition``; returns how long it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def create_status(url: str, key: str, secret: str) -> int:
    return httpx.post(url + "/session/create", headers=auth_header(key, secret)).status_code


def streams_status(url: str, key: str, secret: str, session_id: str) -> int:
    path = f"/v2/project/{key}/session/{session_id}/stream"
    return httpx.get(url + path, headers=auth_header(key, secret)).status_code


async def connect_refused(url: str, session_id: str, token: str) -> bool:
    client = await WsClient.open(url)
    try:
        reply = await client.request({"type": "connect", "session_id": session_id, "token": token})
        if reply["type"] == "connected":
            return False
        assert reply["type"] == "error" and reply["code"] in {"invalid_token", "not_found"}, reply
        code, _ = await client.closed()
        assert code is not None and 4001 <= code <= 4004, code
        return True
    finally:
        await client.close()


async def test_a_deleted_project_stops_working_at_once_but_live_connections_stay(
    tmp_path: pathlib.Path,
) -> None:
    with ServeProcess(tmp_path, API_KEY, API_SECRET, ["--no-media"]) as server:
        created = cli_json(tmp_path, "project", "create", "--name", "doomed")
        key, secret = created["api_key"], created["api_secret"]
        sdk = opentok.Client(key, secret, api_url=server.url)
        session_id = sdk.create_session().session_id
        live = await WsClient.join(server.url, session_id, sdk.generate_token(session_id))
        spare_token = sdk.generate_token(session_id)
        assert streams_status(server.url, key, secret, session_id) == 200

        deleted = cli_json(tmp_path, "project", "delete", key)
        assert deleted == {"api_key": key, "deleted": True}
        took = await until(
            lambda: create_status(server.url, key, secret) == 403, TAKES_EFFECT_WITHIN, "REST refused"
        )
        assert streams_status(server.url, key, secret, session_id) == 403
        assert await connect_refused(server.url, session_id, spare_token)
        # The connection made before the deletion stays, and still answers.
        reply = await live.request({"type": "signal", "signal_type": "x", "data": "still here"})
        assert reply["type"] == "ack" and not live._reader.done(), reply
        await live.close()
        # The other project is untouched.
        assert create_status(server.url, API_KEY, API_SECRET) == 200
        print(f"deletion took effect after {took:.2f} s")
        again = cli(tmp_path, "project", "delete", key)
        assert again.returncode == 1 and f"no project {key}" in again.stderr


async def test_a_rotated_secret_works_and_the_old_one_only_for_its_grace(tmp_path: pathlib.Path) -> None:
    grace = 15.0  # room for a slow CLI start on a loaded machine
    with ServeProcess(tmp_path, API_KEY, API_SECRET, ["--no-media"]) as server:
        created = cli_json(tmp_path, "project", "create", "--name", "rotated")
        key, old = created["api_key"], created["api_secret"]
        old_sdk = opentok.Client(key, old, api_url=server.url)
        session_id = old_sdk.create_session().session_id
        live = await WsClient.join(server.url, session_id, old_sdk.generate_token(session_id))
        old_token = old_sdk.generate_token(session_id)

        rotated = cli_json(tmp_path, "project", "rotate-secret", key, "--grace", str(grace))
        new = rotated["api_secret"]
        assert new != old and rotated["api_key"] == key
        expires = rotated["previous_secret_expires_at"] / 1000
        assert expires - time.time() > 2, "the CLI took most of the grace period"
        await until(lambda: create_status(server.url, key, new) == 200, TAKES_EFFECT_WITHIN, "the new secret")
        new_token = opentok.Client(key, new).generate_token(session_id)
        newcomer = await WsClient.join(server.url, session_id, new_token)
        # Within the grace period the old secret still signs REST calls and tokens.
        assert create_status(server.url, key, old) == 200
        assert time.time() < expires
        during = await WsClient.join(server.url, session_id, old_token)

        await until(
            lambda: create_status(server.url, key, old) == 403, grace + TAKES_EFFECT_WITHIN, "old refused"
        )
        assert time.time() >= expires - 1, "the old secret was refused before its grace ended"
        assert await connect_refused(server.url, session_id, old_token)
        assert create_status(server.url, key, new) == 200
        # Connections made with the old secret stay.
        for client in (live, during, newcomer):
            assert not client._reader.done()
            await client.close()

        revoke = cli_json(tmp_path, "project", "rotate-secret", key, "--grace", "0")
        await until(
            lambda: create_status(server.url, key, new) == 403, TAKES_EFFECT_WITHIN, "revoked at once"
        )
        assert create_status(server.url, key, revoke["api_secret"]) == 200
        assert revoke["previous_secret_expires_at"] is None


def test_delete_and_rotate_refuse_bad_input_and_change_nothing(tmp_path: pathlib.Path) -> None:
    created = cli_json(tmp_path, "project", "create")
    key = created["api_key"]
    for args, message in [
        (["project", "rotate-secret", "99999999"], "no project 99999999"),
        (["project", "delete", "99999999"], "no project 99999999"),
        (["project", "rotate-secret", key, "--grace", "-5"], "--grace must be 0 to 604800 seconds"),
        (["project", "rotate-secret", key, "--grace", "nan"], "--grace must be 0 to 604800 seconds"),
        (["project", "rotate-secret", key, "--grace", "inf"], "--grace must be 0 to 604800 seconds"),
    ]:
        done = cli(tmp_path, *args)
        assert done.returncode == 1 and f"salon: error: {message}" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    listed = cli(tmp_path, "project", "list")
    assert [json.loads(line)["api_key"] for line in listed.stdout.splitlines()] == [key]
    # The secret is unchanged: a token minted with it still verifies against the store's.
    token_done = cli(tmp_path, "session", "create", "--api-key", key)
    assert token_done.returncode == 0, token_done.stderr
