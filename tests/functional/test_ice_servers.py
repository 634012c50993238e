"""Clients get the STUN/TURN servers in ``connected``, with TURN credentials minted for them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import pathlib
import sys
import time

import opentok
import pytest

from salon.cli import main
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient

TURN_SECRET = "turn-secret-4f1d2c9b7e"


def expected_credential(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


async def test_a_server_without_ice_servers_hands_out_none(server: RunningServer) -> None:
    sid = server.session()
    client = await WsClient.join(server.url, sid, server.token(sid))
    assert client.connected is not None and client.connected["ice_servers"] == []
    await client.close()


async def test_each_connection_gets_stun_and_turn_servers_with_its_own_expiring_credential(
    tmp_path: pathlib.Path,
) -> None:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        media=False,
        ice_servers=("stun:127.0.0.1:3478", "turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"),
        turn_secret=TURN_SECRET,
        turn_ttl=3600,
    )
    with ServerThread(config) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        a = await WsClient.join(server.url, sid, server.token(sid))
        b = await WsClient.join(server.url, sid, server.token(sid, "subscriber"))
        for client in (a, b):
            assert client.connected is not None
            stun, turn = client.connected["ice_servers"]
            assert stun == {"urls": ["stun:127.0.0.1:3478"], "username": None, "credential": None}
            assert turn["urls"] == ["turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"]
            expiry, _, user = turn["username"].partition(":")
            assert user == client.connection_id
            assert abs(int(expiry) - (time.time() + 3600)) < 5
            assert turn["credential"] == expected_credential(TURN_SECRET, turn["username"])
        await a.close()
        await b.close()


def test_inconsistent_ice_settings_stop_the_server_from_being_built(tmp_path: pathlib.Path) -> None:
    from salon.server.app import create_app

    with pytest.raises(ValueError, match="turn: URLs need credentials"):
        create_app(ServerConfig(data_dir=tmp_path, ice_servers=("turn:127.0.0.1",)))


def test_serve_refuses_bad_ice_options_with_a_clear_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SALON_TURN_SECRET", raising=False)
    base = ["serve", "--port", "0", "--data-dir", str(tmp_path)]
    assert main([*base, "--ice-server", "turn:127.0.0.1"]) == 1
    assert "turn: URLs need credentials" in capsys.readouterr().err
    assert main([*base, "--ice-server", "turn://127.0.0.1"]) == 1
    assert "has no '//'" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main([*base, "--ice-server", "turn:127.0.0.1", "--turn-secret-file", str(missing)]) == 1
    assert f"cannot read the TURN secret file {missing}: No such file or directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main([*base, "--ice-server", "turn:127.0.0.1", "--turn-secret-file", str(empty)]) == 1
    assert "is empty" in capsys.readouterr().err
    secret_file = tmp_path / "secret"
    secret_file.write_text(TURN_SECRET)
    args = [*base, "--ice-server", "turn:127.0.0.1", "--turn-secret-file", str(secret_file)]
    assert main([*args, "--turn-ttl", "0"]) == 1
    assert "positive number of seconds" in capsys.readouterr().err
    monkeypatch.setenv("SALON_TURN_SECRET", TURN_SECRET)
    assert main([*base, "--ice-server", "stun:127.0.0.1"]) == 1
    err = capsys.readouterr().err
    assert "no turn: or turns: ICE server URL" in err and TURN_SECRET not in err


async def test_serve_reads_the_turn_secret_from_a_file_and_never_prints_it(tmp_path: pathlib.Path) -> None:
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text(TURN_SECRET + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
    env.update(SALON_API_KEY=API_KEY, SALON_API_SECRET=API_SECRET)
    command = [
        *(sys.executable, "-m", "salon", "serve", "--port", "0", "--no-media", "--log-level", "debug"),
        *("--data-dir", str(tmp_path), "--ice-server", "turn:127.0.0.1:3478"),
        *("--turn-secret-file", str(secret_file), "--turn-ttl", "120"),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while "salon serving on " not in (lines[-1] if lines else ""):
                line = (await proc.stdout.readline()).decode()
                assert line, f"the server exited: {lines}"
                lines.append(line)
        url = lines[-1].split()[-1]
        sdk = opentok.Client(API_KEY, API_SECRET, api_url=url)
        sid = sdk.create_session(media_mode=opentok.MediaModes.routed).session_id
        client = await WsClient.join(url, sid, str(sdk.generate_token(sid)))
        assert client.connected is not None
        (turn,) = client.connected["ice_servers"]
        assert abs(int(turn["username"].split(":")[0]) - (time.time() + 120)) < 5
        assert turn["credential"] == expected_credential(TURN_SECRET, turn["username"])
        await client.close()
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    output = "".join(lines) + out.decode()
    assert "DEBUG" in output  # the server logged at debug level...
    assert TURN_SECRET not in output  # ...and never the secret
    assert turn["credential"] not in output
