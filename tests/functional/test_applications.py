"""Vonage applications: an id and an RSA key pair; RS256 JWTs for REST calls and client tokens.

The JWTs here are made as ``vonage-jwt`` makes them (REST: ``application_id``, ``iat``,
``exp = iat + 900``, ``jti``; client tokens: ``vonage-video``'s claims). The SDKs themselves,
unmodified, are driven in ``test_sdk_matrix.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import stat
import time
import uuid

import httpx
import jwt
import pytest

from salon.cli import main
from salon.ids import decode_session_id
from salon.store import Store, database_url_for
from salon.tokens import generate_application_token, new_rsa_key_pair, verify_token
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient


def bearer(app: str, private_key: str, /, **claims: object) -> dict[str, str]:
    now = int(time.time())
    payload: dict[str, object] = {
        "application_id": app,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "exp": now + 900,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return {"Authorization": "Bearer " + jwt.encode(payload, private_key, algorithm="RS256")}


async def add_application(data_dir: pathlib.Path) -> tuple[str, str, str]:
    """A new application in the database of the server on ``data_dir``: (id, private key, secret)."""
    private_key, public_key = new_rsa_key_pair()
    store = Store(database_url_for(data_dir))
    await store.open()
    try:
        app = await store.create_application("app", public_key)
    finally:
        await store.close()
    return app.api_key, private_key, app.api_secret


def create_session(server: RunningServer, headers: dict[str, str]) -> httpx.Response:
    # vonage-video sends its form body with Content-Type: application/json once it has sent JSON.
    return httpx.post(f"{server.url}/session/create", content=b"", headers=headers)


async def test_application_rest_calls_and_client_tokens(
    server: RunningServer, tmp_path: pathlib.Path
) -> None:
    app_id, private_key, app_secret = await add_application(tmp_path)
    r = create_session(server, bearer(app_id, private_key))
    assert r.status_code == 200, r.text
    body = r.json()[0]
    sid = body["session_id"]
    assert decode_session_id(sid).api_key == app_id
    assert body["project_id"] == body["partner_id"] == app_id
    token = generate_application_token(
        app_id,
        private_key,
        sid,
        role="moderator",
        data="name=Ann",
        initial_layout_class_list=["focus", "big"],
        expire_time=int(time.time()) + 900,
    )
    ann = await WsClient.join(server.url, sid, token)
    try:
        assert ann.connected is not None and ann.connected["role"] == "moderator"
        assert ann.connected["connection"]["data"] == "name=Ann"
        await ann.request({"type": "publish", "name": "cam"})
        streams = f"{server.url}/v2/project/{app_id}/session/{sid}/stream"
        # The same token again (the Vonage SDK's HTTP client retries with it), and in X-OPENTOK-AUTH.
        headers = bearer(app_id, private_key)
        for h in [headers, headers, {"X-OPENTOK-AUTH": headers["Authorization"][7:]}]:
            r = httpx.get(streams, headers=h)
            assert r.status_code == 200, r.text
            assert [s["layoutClassList"] for s in r.json()["items"]] == [["focus", "big"]]
        # An RS256 JWT of this application cannot act on another project, nor a project's on it.
        r = httpx.get(f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream", headers=headers)
        assert r.status_code == 403 and "another project" in r.json()["message"]
    finally:
        await ann.close()

    other_key, _ = new_rsa_key_pair()
    now = int(time.time())
    for headers, message in [
        (bearer(app_id, other_key), "signature"),
        (bearer(app_id, private_key, exp=now + 1000), "at most 15 minutes"),
        (bearer(app_id, private_key, iat=now - 1000, exp=now - 100), "expired"),
        (bearer(app_id, private_key, application_id=None, iss=app_id), "application_id"),
        (bearer(app_id, private_key, ist="account"), "ist=project"),
        (bearer(str(uuid.uuid4()), private_key), "unknown project"),
        # The application's (never shown) secret signs nothing; an API key gets no RS256.
        (
            {
                "X-OPENTOK-AUTH": jwt.encode(
                    {"iss": app_id, "ist": "project", "iat": now, "exp": now + 60}, app_secret
                )
            },
            "RS256",
        ),
        (bearer(API_KEY, private_key), "no public key"),
        ({"Authorization": "Basic abc"}, "missing"),
    ]:
        r = create_session(server, headers)
        assert r.status_code == 403 and message in r.json()["message"], (message, r.text)

    # Client tokens: a wrong key, an HS256 token signed with the hidden secret, an expired one.
    hs256 = jwt.encode(
        {"session_id": sid, "iss": app_id, "ist": "project", "scope": "session.connect", "exp": now + 60},
        app_secret,
    )
    expired = jwt.encode(
        {"session_id": sid, "application_id": app_id, "scope": "session.connect", "exp": now - 10},
        private_key,
        algorithm="RS256",
    )
    for bad, message in [
        (generate_application_token(app_id, other_key, sid), "signature is invalid"),
        (hs256, "project (with an API secret) does not exist"),
        (expired, "expired"),
    ]:
        client = await WsClient.open(server.url)
        try:
            reply = await client.request({"type": "connect", "session_id": sid, "token": bad})
            assert reply["type"] == "error" and reply["code"] == "invalid_token", reply
            assert message in reply["message"], reply
        finally:
            await client.close()


async def test_an_api_key_project_is_unchanged(server: RunningServer) -> None:
    sid = server.session()
    r = httpx.get(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream",
        headers={"Authorization": "Bearer " + server.sdk.get_headers()["X-OPENTOK-AUTH"]},
    )
    assert r.status_code == 200, r.text
    claims = verify_token(server.token(sid), lambda key: API_SECRET)
    assert claims.api_key == API_KEY


def test_cli_application_create_list_update_and_token(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["application", "create", "--name", "web", *data]) == 0
    created = json.loads(capsys.readouterr().out)
    key_file = pathlib.Path(created["private_key_file"])
    assert key_file.parent == tmp_path and uuid.UUID(created["application_id"])
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    private_key = key_file.read_text()
    assert private_key.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8: Node's Vonage mode needs it
    app_id = created["application_id"]

    # Never overwritten: a second application cannot reuse the file, and nothing is stored.
    assert main(["application", "create", "--private-key", str(key_file), *data]) == 1
    assert "cannot create the private key file" in capsys.readouterr().err
    # Registering one's own public key; a private key or garbage instead is refused.
    mine_private, mine_public = new_rsa_key_pair()
    (tmp_path / "mine.pub").write_text(mine_public)
    (tmp_path / "mine.key").write_text(mine_private)
    assert main(["application", "create", "--public-key", str(tmp_path / "mine.pub"), *data]) == 0
    mine_id = json.loads(capsys.readouterr().out)["application_id"]
    assert main(["application", "create", "--public-key", str(tmp_path / "mine.key"), *data]) == 1
    assert "not a PEM public key" in capsys.readouterr().err
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    for weak, message in [
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "2048 to 8192 bits"),
        (ec.generate_private_key(ec.SECP256R1()), "must be an RSA key"),
    ]:
        pem = weak.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (tmp_path / "weak.pub").write_bytes(pem)
        assert main(["application", "create", "--public-key", str(tmp_path / "weak.pub"), *data]) == 1
        assert message in capsys.readouterr().err
    assert main(["application", "list", *data]) == 0
    listed = [json.loads(line)["application_id"] for line in capsys.readouterr().out.splitlines()]
    assert listed == [app_id, mine_id]

    # An application is a project: callbacks are set the same way.
    args = ["project", "update", app_id, "--callback-url", "https://example.test/cb", *data]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["callback_url"] == "https://example.test/cb"

    assert main(["session", "create", "--api-key", app_id, *data]) == 0
    sid = capsys.readouterr().out.strip()
    assert decode_session_id(sid).api_key == app_id
    assert main(["token", sid, *data]) == 1
    assert "--private-key" in capsys.readouterr().err
    assert main(["token", sid, "--private-key", str(tmp_path / "mine.key"), *data]) == 1
    assert "does not match" in capsys.readouterr().err
    token_args = ["token", sid, "--private-key", str(key_file), "--role", "subscriber", "--data", "x=1"]
    assert main([*token_args, "--layout-class", "a", *data]) == 0
    token = capsys.readouterr().out.strip()
    public_key = asyncio.run(_public_key(tmp_path, app_id))
    claims = verify_token(token, lambda key: None, public_key_for=lambda key: public_key, session_id=sid)
    assert (claims.api_key, claims.role.value, claims.connection_data) == (app_id, "subscriber", "x=1")
    assert claims.initial_layout_class_list == ("a",)


async def _public_key(data_dir: pathlib.Path, app_id: str) -> str:
    store = Store(database_url_for(data_dir))
    await store.open()
    try:
        project = await store.get_project(app_id)
    finally:
        await store.close()
    assert project is not None and project.public_key is not None
    return project.public_key


async def test_the_servers_own_project_is_never_an_application(tmp_path: pathlib.Path) -> None:
    from salon.errors import SalonError
    from salon.server.app import ensure_project
    from salon.server.config import ServerConfig

    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        app = await store.create_application("first", new_rsa_key_pair()[1])
        announced: list[str] = []
        project = await ensure_project(store, ServerConfig(data_dir=tmp_path), announced.append)
        assert not project.is_application and project.api_key != app.api_key
        assert "SALON_API_SECRET" in announced[0]
        config = ServerConfig(data_dir=tmp_path, api_key=app.api_key, api_secret="x" * 40)
        with pytest.raises(SalonError, match="is an application"):
            await ensure_project(store, config, announced.append)
    finally:
        await store.close()
