"""The REST API driven by the official ``opentok`` SDK, and by raw HTTP for bad input."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import opentok
import pytest
from opentok.exceptions import AuthError, ForceDisconnectError, OpenTokException, RequestError

from salon.ids import decode_session_id
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient


def auth_header(key: str = API_KEY, secret: str = API_SECRET, **claims: object) -> dict[str, str]:
    now = int(time.time())
    payload: dict[str, object] = {"iss": key, "ist": "project", "iat": now, "exp": now + 180, "jti": "0.5"}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}  # None: leave the claim out
    return {"X-OPENTOK-AUTH": jwt.encode(payload, secret, algorithm="HS256")}


def test_sdk_creates_sessions_that_decode_to_the_api_key(server: RunningServer) -> None:
    for kwargs in [
        {},
        {
            "media_mode": opentok.MediaModes.routed,
            "archive_mode": opentok.ArchiveModes.always,
            "location": "12.34.56.78",
            "e2ee": True,
        },
    ]:
        session = server.sdk.create_session(**kwargs)  # type: ignore[arg-type]
        decoded = decode_session_id(session.session_id)
        assert decoded.api_key == API_KEY
        assert decoded.location == kwargs.get("location", "")


def test_sdk_create_session_works_with_a_trailing_slash_in_api_url(server: RunningServer) -> None:
    client = opentok.Client(API_KEY, API_SECRET, api_url=server.url + "/")
    assert decode_session_id(client.create_session().session_id).api_key == API_KEY


def test_session_create_answers_exact_content_type_and_array(server: RunningServer) -> None:
    r = httpx.post(server.url + "/session/create", data={"p2p.preference": "disabled"}, headers=auth_header())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert isinstance(body, list) and body[0]["session_id"].startswith("1_")
    assert body[0]["project_id"] == API_KEY and body[0]["media_mode"] == "routed"


def test_session_create_parses_form_sent_as_json_content_type(server: RunningServer) -> None:
    # vonage-video sends its form body with Content-Type: application/json.
    headers = {**auth_header(), "Content-Type": "application/json"}
    r = httpx.post(server.url + "/session/create", content="media_mode=relayed&e2ee=True", headers=headers)
    assert r.status_code == 200
    assert r.json()[0]["media_mode"] == "relayed" and r.json()[0]["e2ee"] is True


@pytest.mark.parametrize(
    "body", ["location=not-an-ip", "archiveMode=sometimes", "e2ee=maybe", "p2p.preference=x"]
)
def test_session_create_refuses_bad_options(server: RunningServer, body: str) -> None:
    headers = {**auth_header(), "Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(server.url + "/session/create", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["message"]


def test_session_create_takes_a_json_object_body(server: RunningServer) -> None:
    body = {"media_mode": "relayed", "archiveMode": "always", "location": "10.1.2.3", "e2ee": True}
    r = httpx.post(server.url + "/session/create", json=body, headers=auth_header())
    assert r.status_code == 200, r.text
    created = r.json()[0]
    assert (created["media_mode"], created["archive_mode"], created["location"], created["e2ee"]) == (
        "relayed",
        "always",
        "10.1.2.3",
        True,
    )
    assert decode_session_id(created["session_id"]).location == "10.1.2.3"


@pytest.mark.parametrize(
    "body", ['{"media_mode": ', "{not json}", '["media_mode", "relayed"]', '{"location": "x"}']
)
def test_session_create_refuses_broken_json_with_400(server: RunningServer, body: str) -> None:
    headers = {**auth_header(), "Content-Type": "application/json"}
    r = httpx.post(server.url + "/session/create", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json") and r.json()["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/stream"), ("POST", "/mute"), ("POST", "/signal"), ("POST", "/stream/x/mute")],
)
def test_auth_is_checked_before_the_body(server: RunningServer, method: str, path: str) -> None:
    sid = server.session()
    url = f"{server.url}/v2/project/{API_KEY}/session/{sid}{path}"
    broken = {"Content-Type": "application/json"}
    for headers in ({}, auth_header(secret="e" * 40), auth_header(key="99999999")):
        r = httpx.request(method, url, content="{broken", headers={**broken, **headers})
        assert r.status_code == 403, (headers, r.text)
        assert r.json()["message"]
    if path != "/stream/x/mute":  # it takes no body
        r = httpx.request(method, url, content="{broken", headers={**broken, **auth_header()})
        assert r.status_code == 400 and r.json()["message"], r.text


def test_sdk_tokens_of_both_formats_connect(server: RunningServer) -> None:
    async def run() -> None:
        sid = server.session()
        for use_jwt in (True, False):
            token = server.sdk.generate_token(
                sid, role=opentok.Roles.moderator, data="name=Ann", use_jwt=use_jwt
            )
            client = await WsClient.join(server.url, sid, token)
            assert client.connected is not None
            assert client.connected["connection"]["data"] == "name=Ann"
            assert client.connected["role"] == "moderator"
            await client.close()

    import asyncio

    asyncio.run(run())


async def test_sdk_lists_and_gets_streams_and_sets_class_lists(server: RunningServer) -> None:
    sid = server.session()
    assert server.sdk.list_streams(sid).count == 0
    pub = await WsClient.join(server.url, sid, server.token(sid))
    published = await pub.request({"type": "publish", "name": "cam", "video_type": "camera"})
    stream_id = published["stream"]["stream_id"]

    streams = server.sdk.list_streams(sid)
    assert streams.count == 1
    assert (streams.items[0].id, streams.items[0].name, streams.items[0].videoType) == (
        stream_id,
        "cam",
        "camera",
    )
    stream = server.sdk.get_stream(sid, stream_id)
    assert stream.id == stream_id and stream.layoutClassList == []

    server.sdk.set_stream_class_lists(sid, [{"id": stream_id, "layoutClassList": ["focus", "full"]}])
    assert server.sdk.get_stream(sid, stream_id).layoutClassList == ["focus", "full"]

    with pytest.raises(RequestError):
        server.sdk.get_stream(sid, "00000000-0000-0000-0000-000000000000")
    await pub.close()


async def test_sdk_signals_reach_all_connections_or_one(server: RunningServer) -> None:
    sid = server.session()
    a = await WsClient.join(server.url, sid, server.token(sid))
    b = await WsClient.join(server.url, sid, server.token(sid))
    server.sdk.send_signal(sid, {"type": "chat", "data": "to all"})
    for client in (a, b):
        event = await client.next("signal")
        assert (event["signal_type"], event["data"], event["from_connection_id"]) == ("chat", "to all", None)
    assert b.connection_id is not None
    server.sdk.send_signal(sid, {"type": "dm", "data": "just b"}, b.connection_id)
    assert (await b.next("signal"))["data"] == "just b"
    assert [m for m in await a.quiet() if m["type"] == "signal"] == []
    with pytest.raises(RequestError):
        server.sdk.send_signal(sid, {"type": "dm", "data": "x"}, "no-such-connection")
    await a.close()
    await b.close()


async def test_sdk_force_disconnect_destroys_the_connection(server: RunningServer) -> None:
    sid = server.session()
    a = await WsClient.join(server.url, sid, server.token(sid))
    b = await WsClient.join(server.url, sid, server.token(sid))
    await b.request({"type": "publish", "name": "b"})
    assert b.connection_id is not None
    server.sdk.force_disconnect(sid, b.connection_id)
    assert (await b.next("session_disconnected"))["reason"] == "forceDisconnected"
    assert (await b.closed())[0] == 4009
    assert (await a.next("stream_destroyed"))["reason"] == "forceDisconnected"
    destroyed = await a.next("connection_destroyed")
    assert (destroyed["connection_id"], destroyed["reason"]) == (b.connection_id, "forceDisconnected")
    with pytest.raises(ForceDisconnectError):
        server.sdk.force_disconnect(sid, b.connection_id)
    await a.close()


async def test_sdk_mute_stream_and_mute_all(server: RunningServer) -> None:
    sid = server.session()
    a = await WsClient.join(server.url, sid, server.token(sid))
    b = await WsClient.join(server.url, sid, server.token(sid))
    sa = (await a.request({"type": "publish", "name": "a"}))["stream"]["stream_id"]
    sb = (await b.request({"type": "publish", "name": "b"}))["stream"]["stream_id"]

    server.sdk.mute_stream(sid, sa)
    assert (await a.next("mute_forced"))["stream_id"] == sa
    changed = await b.next("stream_property_changed")
    assert (changed["stream_id"], changed["property"], changed["new_value"]) == (sa, "has_audio", False)
    assert (server.sdk.get_stream(sid, sa).id, has_media(server, sid, sa)) == (sa, (False, True))
    assert has_media(server, sid, sb) == (True, True)

    server.sdk.mute_all(sid, [sa])  # sends {"active": true, "excludedStreams": [sa]}
    assert (await b.next("mute_forced"))["stream_id"] == sb
    assert [m for m in await a.quiet() if m["type"] == "mute_forced"] == []
    assert has_media(server, sid, sb) == (False, True)

    # Mute-all also applies to streams published later, until disabled.
    c = await WsClient.join(server.url, sid, server.token(sid))
    sc = (await c.request({"type": "publish", "name": "c"}))["stream"]["stream_id"]
    assert (await c.next("mute_forced"))["stream_id"] == sc
    assert has_media(server, sid, sc) == (False, True)
    server.sdk.disable_force_mute(sid)
    published = await c.request({"type": "publish", "name": "c2"})
    assert published["stream"]["has_audio"] is True
    sc2 = published["stream"]["stream_id"]

    # vonage-video's spelling of the excluded list: a's and b's streams are left alone, c's muted.
    r = httpx.post(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/mute",
        json={"active": True, "excludedStreamIds": [sa, sb]},
        headers=auth_header(),
    )
    assert (r.status_code, r.json()) == (200, {})
    forced = {(await c.next("mute_forced"))["stream_id"] for _ in range(2)}
    assert forced == {sc, sc2}
    assert has_media(server, sid, sc2) == (False, True)
    for client in (a, b):
        assert [m for m in await client.quiet() if m["type"] == "mute_forced"] == []
    # ... and null: switched off, a stream published now keeps its audio.
    r = httpx.post(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/mute",
        json={"active": False, "excludedStreamIds": None},
        headers=auth_header(),
    )
    assert (r.status_code, r.json()) == (200, {})
    assert (await c.request({"type": "publish", "name": "c3"}))["stream"]["has_audio"] is True
    assert [m for m in await c.quiet() if m["type"] == "mute_forced"] == []
    with pytest.raises(OpenTokException):
        server.sdk.mute_stream(sid, "no-such-stream")
    r = httpx.post(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream/no-such-stream/mute", headers=auth_header()
    )
    assert r.status_code == 404 and r.json()["code"] == "not_found" and r.json()["message"]
    for client in (a, b, c):
        await client.close()


def has_media(server: RunningServer, sid: str, stream_id: str) -> tuple[bool, bool]:
    """(hasAudio, hasVideo) of a stream, as the REST API reports it."""
    r = httpx.get(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream/{stream_id}", headers=auth_header()
    )
    assert r.status_code == 200, r.text
    return r.json()["hasAudio"], r.json()["hasVideo"]


async def live_session_gone(server: RunningServer, sid: str, timeout: float = 10) -> None:
    """Wait until the signalling service has dropped its live state of ``sid``."""
    service = server.thread.server.config.app.state.signalling
    deadline = time.monotonic() + timeout
    while sid in service.sessions:
        assert time.monotonic() < deadline, (
            f"the live session {sid} still exists {timeout} s after its last client left"
        )
        await asyncio.sleep(0.02)


async def test_rest_mute_all_outlives_the_live_session_until_disabled(server: RunningServer) -> None:
    sid = server.session()
    server.sdk.mute_all(sid, [])  # no client connected yet
    a = await WsClient.join(server.url, sid, server.token(sid))
    first = (await a.request({"type": "publish", "name": "a"}))["stream"]
    assert first["has_audio"] is False
    assert (await a.next("mute_forced"))["stream_id"] == first["stream_id"]
    await a.close()
    await live_session_gone(server, sid)  # the last client left

    b = await WsClient.join(server.url, sid, server.token(sid))
    assert (await b.request({"type": "publish", "name": "b"}))["stream"]["has_audio"] is False
    # A moderator over signalling switches off what the REST API switched on.
    mod = await WsClient.join(server.url, sid, server.token(sid, "moderator"))
    assert (await mod.request({"type": "force_mute", "active": False}))["type"] == "ack"
    assert (await b.request({"type": "publish", "name": "b2"}))["stream"]["has_audio"] is True
    await b.close()
    await mod.close()
    await live_session_gone(server, sid)

    server.sdk.mute_all(sid, [])
    server.sdk.disable_force_mute(sid)  # both on a session with no client
    c = await WsClient.join(server.url, sid, server.token(sid))
    assert (await c.request({"type": "publish", "name": "c"}))["stream"]["has_audio"] is True
    assert [m for m in await c.quiet() if m["type"] == "mute_forced"] == []
    await c.close()


def test_openapi_document_describes_the_rest_surface(server: RunningServer) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    paths = spec["paths"]
    base = "/v2/project/{apiKey}/session/{sessionId}"
    for path, method in [
        ("/session/create", "post"),
        (base + "/stream", "get"),
        (base + "/stream", "put"),
        (base + "/stream/{streamId}", "get"),
        (base + "/signal", "post"),
        (base + "/connection/{connectionId}/signal", "post"),
        (base + "/connection/{connectionId}", "delete"),
        (base + "/stream/{streamId}/mute", "post"),
        (base + "/mute", "post"),
    ]:
        assert method in paths[path], (path, method)
    assert "204" in paths[base + "/connection/{connectionId}"]["delete"]["responses"]


def test_health_answers_200(server: RunningServer) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


# -- bad credentials -------------------------------------------------------------------------


def test_sdk_with_a_wrong_secret_gets_auth_errors(server: RunningServer) -> None:
    bad = opentok.Client(API_KEY, "f" * 40, api_url=server.url)
    sid = server.session()
    with pytest.raises(RequestError, match="invalid credentials"):
        bad.create_session()
    with pytest.raises(AuthError):
        bad.list_streams(sid)
    with pytest.raises(AuthError):
        bad.force_disconnect(sid, "x")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-OPENTOK-AUTH": "not-a-jwt"},
        auth_header(exp=int(time.time()) - 3600, iat=int(time.time()) - 3700),
        auth_header(secret="e" * 40),
        auth_header(ist="account"),
        auth_header(key="99999999"),
        auth_header(exp=int(time.time()) + 3600),
        auth_header(iat=None),
        auth_header(ist=None),
    ],
    ids=[
        "missing",
        "garbage",
        "expired",
        "wrong-secret",
        "wrong-ist",
        "unknown-project",
        "too-long-lived",
        "no-iat",
        "no-ist",
    ],
)
def test_bad_or_missing_jwts_get_403_with_a_message(server: RunningServer, headers: dict[str, str]) -> None:
    sid = server.session()
    for method, path in [
        ("GET", f"/v2/project/{API_KEY}/session/{sid}/stream"),
        ("POST", "/session/create"),
        ("DELETE", f"/v2/project/{API_KEY}/session/{sid}/connection/abc"),
    ]:
        r = httpx.request(method, server.url + path, headers=headers)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["message"]


def test_the_sdk_sends_every_claim_salon_requires(server: RunningServer) -> None:
    header = server.sdk.get_headers()["X-OPENTOK-AUTH"]
    claims = jwt.decode(header, API_SECRET, algorithms=["HS256"])
    assert {"iss", "ist", "iat", "exp"} <= set(claims)


def test_jwts_as_the_node_sdk_sends_them_are_accepted(server: RunningServer) -> None:
    """opentok for Node 2.23.2: no jti, exp = iat + 300; a repeated jti is no replay either."""
    now = int(time.time())
    sid = server.session()
    url = f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream"
    for headers in [
        auth_header(jti=None, iat=now, exp=now + 300),
        auth_header(jti="same"),
        auth_header(jti="same"),
        auth_header(iat=now + 50, exp=now + 350),  # the SDK's clock 50 s ahead
        auth_header(iat=now - 280, exp=now - 30),  # expired 30 s ago on a clock 50 s behind
    ]:
        r = httpx.get(url, headers=headers)
        assert r.status_code == 200, (
            r.text,
            jwt.decode(headers["X-OPENTOK-AUTH"], options={"verify_signature": False}),
        )
    for claims, message in [
        ({"iat": now, "exp": now + 301}, "at most 5 minutes"),
        ({"iat": now + 120, "exp": now + 300}, "future"),
        ({"iat": now - 400, "exp": now - 120}, "expired"),
    ]:
        r = httpx.get(url, headers=auth_header(**claims))
        assert r.status_code == 403 and message in r.json()["message"], (claims, r.text)


def test_a_jwt_of_one_project_cannot_act_on_another(server: RunningServer) -> None:
    sid = server.session()
    r = httpx.get(f"{server.url}/v2/project/12121212/session/{sid}/stream", headers=auth_header())
    assert r.status_code == 403 and "another project" in r.json()["message"]


# -- bad input -------------------------------------------------------------------------------


def test_unknown_session_connection_and_stream_get_404(server: RunningServer) -> None:
    sid = server.session()
    base = f"{server.url}/v2/project/{API_KEY}/session"
    h = auth_header()
    assert httpx.get(f"{base}/1_nosuch/stream", headers=h).status_code == 404
    assert httpx.get(f"{base}/{sid}/stream/nosuch", headers=h).status_code == 404
    assert httpx.delete(f"{base}/{sid}/connection/nosuch", headers=h).status_code == 404
    r = httpx.post(f"{base}/{sid}/stream/nosuch/mute", headers=h)  # no client: not live
    assert r.status_code == 404 and r.json()["message"]
    r = httpx.post(f"{base}/{sid}/connection/nosuch/signal", json={"type": "a", "data": "b"}, headers=h)
    assert r.status_code == 404 and r.json()["message"]
    assert httpx.get(f"{server.url}/no/such/path").status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("{not json", 400),
        ('["a list"]', 400),
        ('{"type": 5, "data": []}', 400),
        ('{"type": "' + "t" * 129 + '", "data": "x"}', 413),
        ('{"type": "t", "data": "' + "d" * 8193 + '"}', 413),
    ],
)
def test_bad_signal_bodies_are_refused(server: RunningServer, body: str, status: int) -> None:
    sid = server.session()
    r = httpx.post(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/signal",
        content=body,
        headers={**auth_header(), "Content-Type": "application/json"},
    )
    assert r.status_code == status and r.json()["message"]


@pytest.mark.parametrize(
    "body", ["{}", '{"active": "sometimes"}', "nope", '{"active": true, "excludedStreams": 7}']
)
def test_bad_mute_bodies_get_400(server: RunningServer, body: str) -> None:
    sid = server.session()
    r = httpx.post(
        f"{server.url}/v2/project/{API_KEY}/session/{sid}/mute",
        content=body,
        headers={**auth_header(), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["message"]


def test_bad_class_list_bodies_get_400(server: RunningServer) -> None:
    sid = server.session()
    url = f"{server.url}/v2/project/{API_KEY}/session/{sid}/stream"
    for body in [{}, {"items": []}, {"items": [{"layoutClassList": []}]}, {"items": "x"}]:
        r = httpx.put(url, json=body, headers=auth_header())
        assert r.status_code == 400 and r.json()["message"], body


def _raw_jwt(raw_claims: str, secret: str = API_SECRET) -> str:
    """A well-signed HS256 JWT whose payload is ``raw_claims`` verbatim (``1e400`` decodes to
    infinity, which no JSON encoder writes)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(raw_claims.encode())
    signature = b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


@pytest.mark.parametrize(
    "times",
    [
        '"iat": 1e400, "exp": 1e400',
        '"iat": NOW, "exp": 1e400',
        '"iat": -1e400, "exp": NOW',
        '"iat": NOW, "exp": NaN',
    ],
)
def test_a_rest_jwt_with_absurd_times_is_a_403(server: RunningServer, times: str) -> None:
    now = int(time.time())
    claims = f'{{"iss": "{API_KEY}", "ist": "project", "jti": "x", {times.replace("NOW", str(now))}}}'
    r = httpx.get(
        f"{server.url}/v2/project/{API_KEY}/session/{server.session()}/stream",
        headers={"X-OPENTOK-AUTH": _raw_jwt(claims)},
    )
    assert r.status_code == 403, r.text
    assert r.json()["message"].startswith("the JWT"), r.text
