"""No log level writes a secret or a token (issue 9, defect 10).

A real ``salon serve`` at each ``--log-level``: REST calls (each with its own JWT), demo joins,
client connections with JWT and ``T1==`` tokens (good and badly signed), a secret rotation by
the CLI and calls with the new secret; then everything the server wrote is searched.
"""

from __future__ import annotations

import json
import pathlib
import time

import httpx
import jwt
import opentok
import pytest

from salon.tokens import Role, generate_token
from tests.conftest import API_KEY, API_SECRET
from tests.functional.test_project_revocation import TAKES_EFFECT_WITHIN, cli_json, until
from tests.serveproc import ServeProcess
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    ("level", "log_format"),
    [
        *((level, "text") for level in ("debug", "info", "warning", "error")),
        ("debug", "json"),
        ("info", "json"),
    ],
)
async def test_no_log_level_writes_a_secret_or_a_token(
    tmp_path: pathlib.Path, level: str, log_format: str
) -> None:
    secrets = [API_SECRET]
    tokens: list[str] = []

    def auth(key: str, secret: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"iss": key, "ist": "project", "iat": now, "exp": now + 180, "jti": str(len(tokens))}
        tokens.append(jwt.encode(claims, secret, algorithm="HS256"))
        return {"X-OPENTOK-AUTH": tokens[-1]}

    def client_tokens(key: str, secret: str, session_id: str) -> list[str]:
        minted = [
            generate_token(key, secret, session_id, role=Role.MODERATOR, expire_time=int(time.time()) + 600),
            generate_token(key, secret, session_id, expire_time=int(time.time()) + 600, use_jwt=False),
        ]
        tokens.extend(minted)
        return minted

    args = ["--no-media", "--log-format", log_format, "--node-name", "n1"]
    with ServeProcess(tmp_path, API_KEY, API_SECRET, args, log_level=level) as server:
        url = server.url
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.post("/session/create", headers=auth(API_KEY, API_SECRET))
            assert r.status_code == 200
            session_id = r.json()[0]["session_id"]
            p = f"/v2/project/{API_KEY}/session/{session_id}"
            assert (await http.get(p + "/stream", headers=auth(API_KEY, API_SECRET))).status_code == 200
            signal = {"type": "chat", "data": "hello"}
            assert (
                await http.post(p + "/signal", json=signal, headers=auth(API_KEY, API_SECRET))
            ).status_code == 204
            bad = auth(API_KEY, "x" * 40)  # wrongly signed: refused, and not logged either
            assert (await http.get(p + "/stream", headers=bad)).status_code == 403
            joined = await http.post("/demo/join", json={"room": "lobby", "name": "Ann"})
            assert joined.status_code == 200
            demo_token = joined.json()["token"]
            tokens.append(demo_token)
            minted = client_tokens(API_KEY, API_SECRET, session_id)
            clients = [await WsClient.join(url, session_id, token) for token in minted]
            clients.append(await WsClient.join(url, joined.json()["sessionId"], demo_token))
            forged = generate_token(API_KEY, "y" * 40, session_id, expire_time=int(time.time()) + 600)
            tokens.append(forged)
            refused = await WsClient.open(url)
            reply = await refused.request({"type": "connect", "session_id": session_id, "token": forged})
            assert reply["type"] == "error"
            await refused.close()

            created = cli_json(tmp_path, "project", "create", "--name", "rotated")
            key, old = created["api_key"], created["api_secret"]
            secrets.append(old)
            other = opentok.Client(key, old, api_url=url).create_session().session_id
            rotated = cli_json(tmp_path, "project", "rotate-secret", key, "--grace", "60")
            new = rotated["api_secret"]
            secrets.append(new)

            def new_secret_works() -> bool:
                return httpx.post(url + "/session/create", headers=auth(key, new)).status_code == 200

            await until(new_secret_works, TAKES_EFFECT_WITHIN, "the new secret")
            for token in client_tokens(key, new, other) + client_tokens(key, old, other):
                clients.append(await WsClient.join(url, other, token))
            for client in clients:
                await client.close()
    output = server.output
    assert "salon serving on" in output
    if level == "debug":  # the level really is verbose: requests and frames are logged
        debug = '"level": "DEBUG"' if log_format == "json" else " DEBUG "
        assert debug in output and "/session/create" in output, output[-2000:]
    if log_format == "json":  # every log line is a JSON object with the node name
        lines = server.stderr_path.read_text(encoding="utf-8").splitlines()
        assert lines and all(json.loads(line)["node"] == "n1" for line in lines), lines[:3]
    for secret in secrets:
        assert secret not in output, f"an API secret is in the {level} log"
    for token in tokens:
        assert token not in output, f"a token is in the {level} log"
        signature = token.rsplit(".", 1)[-1] if token.count(".") == 2 else token[-40:]
        assert signature not in output, f"part of a token is in the {level} log"
