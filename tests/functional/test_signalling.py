"""The signalling protocol with several real WebSocket clients against the real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import time
import urllib.parse
import zlib
from typing import Any

import jwt
import opentok
import pytest
import websockets

from salon.errors import ServerError
from salon.ids import encode_session_id
from salon.signalling.service import SignallingConfig
from salon.store import Store, database_url_for
from salon.tokens import generate_token
from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import StuckClient, WsClient


async def test_connect_returns_the_session_as_it_is(server: RunningServer) -> None:
    sid = server.session()
    a = await WsClient.join(server.url, sid, server.token(sid, data="alice"))
    stream = (await a.request({"type": "publish", "name": "a-cam", "width": 640, "height": 480}))["stream"]
    b = await WsClient.join(server.url, sid, server.token(sid, "subscriber", data="bob"))
    assert b.connected is not None
    assert b.connected["session_id"] == sid
    assert b.connected["connection"]["data"] == "bob"
    assert [c["data"] for c in b.connected["connections"]] == ["alice"]
    assert b.connected["streams"] == [stream]
    assert stream["width"] == 640 and stream["video_type"] == "camera"
    await a.close()
    await b.close()


async def test_events_arrive_in_order_at_every_other_connection(server: RunningServer) -> None:
    sid = server.session()
    watchers = [await WsClient.join(server.url, sid, server.token(sid)) for _ in range(3)]
    actor = await WsClient.join(server.url, sid, server.token(sid))
    stream_id = (await actor.request({"type": "publish", "name": "x"}))["stream"]["stream_id"]
    await actor.request({"type": "update_stream", "stream_id": stream_id, "has_video": False})
    await actor.request(
        {
            "type": "update_stream",
            "stream_id": stream_id,
            "has_video": True,
            "video_type": "screen",
            "width": 1280,
            "height": 720,
            "name": "y",
        }
    )
    await actor.request({"type": "unpublish", "stream_id": stream_id})
    await actor.close()
    for watcher in watchers:
        seen = []
        while len(seen) < 9:
            message = await watcher.next()
            if (
                message["type"] != "connection_created"
                or message["connection"]["connection_id"] == actor.connection_id
            ):
                seen.append(message)
        types = [m["type"] for m in seen]
        assert types == [
            "connection_created",
            "stream_created",
            "stream_property_changed",
            "stream_property_changed",
            "stream_property_changed",
            "stream_property_changed",
            "stream_property_changed",
            "stream_destroyed",
            "connection_destroyed",
        ], seen
        props = [(m["property"], m["new_value"]) for m in seen[2:7]]
        assert props == [
            ("has_video", False),
            ("has_video", True),
            ("name", "y"),
            ("video_type", "screen"),
            ("dimensions", [1280, 720]),
        ]
        assert seen[7]["reason"] == "unpublished"
        assert seen[8]["reason"] == "clientDisconnected"
    for watcher in watchers:
        await watcher.close()


async def test_the_publisher_does_not_hear_its_own_events(server: RunningServer) -> None:
    sid = server.session()
    a = await WsClient.join(server.url, sid, server.token(sid))
    await a.request({"type": "publish"})
    assert await a.quiet() == []
    await a.close()


async def test_signals_to_the_session_and_to_one_connection(server: RunningServer) -> None:
    sid = server.session()
    a, b, c = [await WsClient.join(server.url, sid, server.token(sid)) for _ in range(3)]
    assert (await a.request({"type": "signal", "signal_type": "chat", "data": "hello"}))["type"] == "ack"
    for client in (a, b, c):
        event = await client.next("signal")
        assert (event["signal_type"], event["data"], event["from_connection_id"]) == (
            "chat",
            "hello",
            a.connection_id,
        )
    await a.request({"type": "signal", "signal_type": "dm", "data": "psst", "to": c.connection_id})
    event = await c.next("signal")
    assert (event["data"], event["from_connection_id"]) == ("psst", a.connection_id)
    assert [m for m in await b.quiet() + await a.quiet() if m["type"] == "signal"] == []
    reply = await a.request({"type": "signal", "signal_type": "dm", "data": "x", "to": "nobody"})
    assert (reply["type"], reply["code"]) == ("error", "not_found")
    for client in (a, b, c):
        await client.close()


@pytest.mark.parametrize(
    ("role", "request_body", "code"),
    [
        ("subscriber", {"type": "publish"}, "permission_denied"),
        ("publisheronly", {"type": "subscribe", "stream_id": "$STREAM"}, "permission_denied"),
        ("publisher", {"type": "force_disconnect", "connection_id": "$OWNER"}, "permission_denied"),
        ("publisher", {"type": "force_unpublish", "stream_id": "$STREAM"}, "permission_denied"),
        ("publisher", {"type": "force_mute", "stream_id": "$STREAM"}, "permission_denied"),
        ("subscriber", {"type": "unpublish", "stream_id": "$STREAM"}, "permission_denied"),
        (
            "publisher",
            {"type": "update_stream", "stream_id": "$STREAM", "has_audio": False},
            "permission_denied",
        ),
    ],
)
async def test_roles_are_enforced_and_the_connection_stays_healthy(
    server: RunningServer, role: str, request_body: dict[str, str], code: str
) -> None:
    sid = server.session()
    owner = await WsClient.join(server.url, sid, server.token(sid))
    stream_id = (await owner.request({"type": "publish"}))["stream"]["stream_id"]
    client = await WsClient.join(server.url, sid, server.token(sid, role))
    body = json.loads(
        json.dumps(request_body).replace("$STREAM", stream_id).replace("$OWNER", str(owner.connection_id))
    )
    reply = await client.request(body)
    assert (reply["type"], reply["code"]) == ("error", code), reply
    assert reply["message"]
    # Nothing changed, and the refused connection still works.
    assert (await client.request({"type": "signal", "signal_type": "still", "data": "here"}))["type"] == "ack"
    assert (await owner.next("signal"))["data"] == "here"
    assert [
        m
        for m in await owner.quiet()
        if m["type"] in ("stream_destroyed", "mute_forced", "connection_destroyed")
    ] == []
    await client.close()
    await owner.close()


async def test_subscriber_can_subscribe_and_publisheronly_can_publish(server: RunningServer) -> None:
    sid = server.session()
    pub = await WsClient.join(server.url, sid, server.token(sid, "publisheronly"))
    stream_id = (await pub.request({"type": "publish"}))["stream"]["stream_id"]
    sub = await WsClient.join(server.url, sid, server.token(sid, "subscriber"))
    reply = await sub.request({"type": "subscribe", "stream_id": stream_id})
    assert reply["type"] == "subscribed" and reply["stream_id"] == stream_id
    unsub = await sub.request({"type": "unsubscribe", "subscription_id": reply["subscription_id"]})
    assert unsub["type"] == "ack"
    again = await sub.request({"type": "unsubscribe", "subscription_id": reply["subscription_id"]})
    assert again["code"] == "not_found"
    await pub.close()
    await sub.close()


async def test_moderator_forces_unpublish_mute_and_disconnect(server: RunningServer) -> None:
    sid = server.session()
    mod = await WsClient.join(server.url, sid, server.token(sid, "moderator"))
    user = await WsClient.join(server.url, sid, server.token(sid))
    watcher = await WsClient.join(server.url, sid, server.token(sid, "subscriber"))
    s1 = (await user.request({"type": "publish"}))["stream"]["stream_id"]
    s2 = (await user.request({"type": "publish", "video_type": "screen"}))["stream"]["stream_id"]

    assert (await mod.request({"type": "force_mute", "stream_id": s1}))["type"] == "ack"
    assert (await user.next("mute_forced"))["stream_id"] == s1
    assert (await watcher.next("stream_property_changed"))["property"] == "has_audio"

    assert (await mod.request({"type": "force_unpublish", "stream_id": s1}))["type"] == "ack"
    destroyed = await user.next("stream_destroyed")
    assert (destroyed["stream_id"], destroyed["reason"]) == (s1, "forceUnpublished")
    assert (await watcher.next("stream_destroyed"))["reason"] == "forceUnpublished"

    assert (await mod.request({"type": "force_disconnect", "connection_id": user.connection_id}))[
        "type"
    ] == "ack"
    assert (await user.closed())[0] == 4009
    ended = await watcher.next("stream_destroyed")
    assert (ended["stream_id"], ended["reason"]) == (s2, "forceDisconnected")
    gone = await watcher.next("connection_destroyed")
    assert (gone["connection_id"], gone["reason"]) == (user.connection_id, "forceDisconnected")
    # The session goes on for everyone else.
    await mod.request({"type": "signal", "signal_type": "after", "data": "ok"})
    assert (await watcher.next("signal"))["data"] == "ok"
    await mod.close()
    await watcher.close()


async def test_a_moderator_switches_mute_all_on_and_off(server: RunningServer) -> None:
    sid = server.session()
    mod = await WsClient.join(server.url, sid, server.token(sid, "moderator"))
    user = await WsClient.join(server.url, sid, server.token(sid))
    own = (await mod.request({"type": "publish", "name": "mod"}))["stream"]["stream_id"]
    assert (await mod.request({"type": "force_mute", "excluded_stream_ids": [own]}))["type"] == "ack"
    # Every connection hears that mute-all is on (OpenTok.js's Session muteForced, active true).
    for client in (mod, user):
        on = await client.next("mute_all_changed")
        assert (on["active"], on["excluded_stream_ids"]) == (True, [own])
    # A stream published later starts muted, and its owner is told.
    later = (await user.request({"type": "publish", "name": "later"}))["stream"]
    assert later["has_audio"] is False
    assert (await user.next("mute_forced"))["stream_id"] == later["stream_id"]
    assert (await mod.next("stream_created"))["stream"]["has_audio"] is False
    # Only a moderator may switch it off, and never for one stream.
    refused = await user.request({"type": "force_mute", "active": False})
    assert refused["code"] == "permission_denied"
    bad = await mod.request({"type": "force_mute", "active": False, "stream_id": own})
    assert bad["code"] == "invalid_message" and "active" in bad["message"]
    assert (await mod.request({"type": "force_mute", "active": False}))["type"] == "ack"
    # Switching off mutes and unmutes nothing (everyone hears it is off); streams published
    # afterwards keep their audio.
    for client in (mod, user):
        changes = [
            m for m in await client.quiet() if m["type"] not in ("connection_created", "stream_created")
        ]
        assert changes == [{"type": "mute_all_changed", "active": False, "excluded_stream_ids": []}]
    after = (await user.request({"type": "publish", "name": "after"}))["stream"]
    assert after["has_audio"] is True
    assert [m for m in await user.quiet() if m["type"] == "mute_forced"] == []
    await user.close()
    await mod.close()


async def test_a_client_that_vanishes_is_destroyed_as_network_disconnected(server: RunningServer) -> None:
    # The fixture's server drops connections silent for 2 s (heartbeat every 0.5 s).
    sid = server.session()
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    ghost = await WsClient.join(server.url, sid, server.token(sid), answer_pings=False)
    await ghost.request({"type": "publish"})
    started = time.monotonic()
    ghost._reader.cancel()  # stop reading and answering: the socket stays open but silent
    ended = await watcher.next("stream_destroyed", timeout=10)
    gone = await watcher.next("connection_destroyed", timeout=10)
    elapsed = time.monotonic() - started
    assert ended["reason"] == "networkDisconnected"
    assert (gone["connection_id"], gone["reason"]) == (ghost.connection_id, "networkDisconnected")
    assert 1.5 < elapsed < 10
    await watcher.close()
    await ghost.ws.close()


async def _raw_join(url: str, session_id: str, token: str) -> tuple[asyncio.StreamWriter, dict[str, Any]]:
    """Connect over a bare TCP socket (handshake and one masked frame by hand); returns the
    writer, to keep the socket open, and the ``connected`` reply. Nothing reads or answers
    after that: the client has vanished without closing."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /signalling HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps({"type": "connect", "request_id": 1, "session_id": session_id, "token": token})
    data, mask = payload.encode(), os.urandom(4)
    assert len(data) < 65536
    writer.write(
        bytes([0x81, 0x80 | 126])
        + len(data).to_bytes(2, "big")
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )
    first, length = await reader.readexactly(2)
    assert first == 0x81, first  # one unfragmented text frame
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    reply = json.loads(await reader.readexactly(length))
    assert reply["type"] == "connected", reply
    return writer, reply


async def test_a_vanished_client_is_destroyed_within_10_s_with_the_default_timings(tmp_path: Any) -> None:
    with start_server(tmp_path) as thread:  # SignallingConfig() as `salon serve` uses it
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        watcher = await WsClient.join(server.url, sid, server.token(sid))
        writer, connected = await _raw_join(server.url, sid, server.token(sid))
        started = time.monotonic()  # the ghost's last message was its connect
        defaults = SignallingConfig()
        assert (connected["heartbeat_interval"], connected["heartbeat_timeout"]) == (
            defaults.heartbeat_interval,
            defaults.heartbeat_timeout,
        )
        assert defaults.heartbeat_timeout + defaults.heartbeat_interval <= 8
        ghost = connected["connection"]["connection_id"]
        gone = await watcher.next("connection_destroyed", timeout=12)
        elapsed = time.monotonic() - started
        assert (gone["connection_id"], gone["reason"]) == (ghost, "networkDisconnected")
        assert defaults.heartbeat_timeout - 0.5 < elapsed < 10, elapsed
        await watcher.close()
        writer.close()


class _FailingOnce:
    """A media plane whose first ``connection_left`` fails; everything else is the real one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("media plane failure injected by the test")
        await self.inner.connection_left(session_id, connection_id)


async def test_a_failure_while_timing_out_one_connection_does_not_stop_the_heartbeat(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    service = server.thread.server.config.app.state.signalling
    failing = _FailingOnce(service.media)
    service.media = failing
    sid = server.session()
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    ghosts = []
    for _ in range(2):
        ghost = await WsClient.join(server.url, sid, server.token(sid), answer_pings=False)
        ghost._reader.cancel()
        ghosts.append(ghost)
    with caplog.at_level("ERROR", logger="salon.signalling.service"):
        gone = {(await watcher.next("connection_destroyed"))["connection_id"] for _ in ghosts}
        assert gone == {g.connection_id for g in ghosts}
        assert failing.failures == 1
        # Pings and timeouts go on: a later ghost is detected too, and the watcher stays.
        late = await WsClient.join(server.url, sid, server.token(sid), answer_pings=False)
        late._reader.cancel()
        assert (await watcher.next("connection_destroyed"))["connection_id"] == late.connection_id
    assert any(
        r.levelname == "ERROR" and r.exc_info and "timing out connection" in r.getMessage()
        for r in caplog.records
    ), caplog.records
    await watcher.request({"type": "signal", "signal_type": "t", "data": "alive"})
    assert (await watcher.next("signal"))["data"] == "alive"
    await watcher.close()
    for ghost in [*ghosts, late]:
        await ghost.ws.close()


async def test_clean_close_is_client_disconnected(server: RunningServer) -> None:
    sid = server.session()
    a = await WsClient.join(server.url, sid, server.token(sid))
    b = await WsClient.join(server.url, sid, server.token(sid))
    await b.close()
    gone = await a.next("connection_destroyed")
    assert (gone["connection_id"], gone["reason"]) == (b.connection_id, "clientDisconnected")
    await a.close()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_message"),
        ('"a string"', "invalid_message"),
        ('{"type": "teleport", "request_id": 7}', "unknown_type"),
        ('{"request_id": 7}', "unknown_type"),
        ('{"type": "signal"}', "invalid_message"),
        ('{"type": "publish", "request_id": 7, "has_audio": "loud"}', "invalid_message"),
        ('{"type": "subscribe", "request_id": 7}', "invalid_message"),
        ('{"type": "signal", "request_id": 7, "signal_type": "t", "bogus": 1}', "invalid_message"),
        ('{"type": "publish", "request_id": 7, "width": -4}', "invalid_message"),
        ('{"type": "connect", "request_id": 7, "session_id": "s", "token": "t"}', "already_connected"),
        ('{"type": "signal", "request_id": 7, "signal_type": "' + "t" * 129 + '"}', "signal_too_large"),
        (
            '{"type": "signal", "request_id": 7, "signal_type": "t", "data": "' + "d" * 8193 + '"}',
            "signal_too_large",
        ),
        ('{"type": "signal", "request_id": 7, "data": "' + "d" * 70000 + '"}', "message_too_large"),
        ('{"type": "unpublish", "request_id": 7, "stream_id": "nope"}', "not_found"),
        ('{"type": "force_disconnect", "request_id": 7, "connection_id": "nope"}', "permission_denied"),
        ("[" * 30000 + "]" * 30000, "invalid_message"),
        ('{"a":' * 10000 + "1" + "}" * 10000, "invalid_message"),
    ],
    ids=lambda value: value[:30] + (f"...({len(value)})" if len(value) > 30 else ""),
)
async def test_bad_messages_get_an_error_and_change_nothing(
    server: RunningServer, raw: str, code: str
) -> None:
    sid = server.session()
    other = await WsClient.join(server.url, sid, server.token(sid))
    client = await WsClient.join(server.url, sid, server.token(sid))
    assert (await other.next("connection_created"))["connection"]["connection_id"] == client.connection_id
    await client.send(raw)
    error = await client.next("error")
    assert error["code"] == code and error["message"]
    if '"request_id": 7' in raw and code not in ("message_too_large",):
        assert error["request_id"] == 7
    # Both connections still work; no one saw anything but the signal.
    await client.request({"type": "signal", "signal_type": "ok", "data": "after"})
    assert (await other.next("signal"))["data"] == "after"
    assert await other.quiet() == []
    await client.close()
    await other.close()


#: Garbage a client may send before (or instead of) ``connect``: each gets the documented
#: error and the socket keeps waiting for a valid ``connect``.
GARBAGE_BEFORE_CONNECT: list[tuple[str | bytes, str]] = [
    ("", "invalid_message"),
    (b"", "invalid_message"),
    (b"\xff\xfe\x00garbage", "invalid_message"),
    (b'{"type": "connect"}', "invalid_message"),
    ("[" * 30000 + "]" * 30000, "invalid_message"),
    ("[" * 300 + "]" * 300, "invalid_message"),
    ('{"a":' * 10000 + "1" + "}" * 10000, "invalid_message"),
    ('{"type": "connect", "request_id": ' + "[" * 30000 + "]" * 30000 + "}", "invalid_message"),
    ('{"type": "connect", "request_id": 1e400, "session_id": "s", "token": "t"}', "invalid_message"),
    (
        '{"type": "connect", "request_id": 1' + "0" * 5000 + ', "session_id": "s", "token": "t"}',
        "invalid_message",
    ),
    (
        '{"type": "connect", "request_id": 1, "session_id": "s", "token": "t", "protocol_version": 1e400}',
        "invalid_message",
    ),
    (
        '{"type": "connect", "request_id": 1, "session_id": "s", "token": "t", "protocol_version": 1'
        + "0" * 5000
        + "}",
        "invalid_message",
    ),
    ('{"type": "connect", "request_id": NaN, "session_id": "s", "token": "t"}', "invalid_message"),
    ("null", "invalid_message"),
    ("1e400", "invalid_message"),
    ('{"type": 1e400}', "unknown_type"),
    ('{"type": ' + "[" * 30000 + "]" * 30000 + "}", "invalid_message"),
    ("\u00a0", "invalid_message"),
    ('{"request_id": 1, "type": []}', "unknown_type"),
    ('{"type": {"connect": 1}}', "unknown_type"),
]
GARBAGE_IDS = [
    "empty-text",
    "empty-binary",
    "binary-not-utf8",
    "binary-connect-missing-fields",
    "30k-nested-arrays",
    "300-nested-arrays",
    "10k-nested-objects",
    "connect-nested-request-id",
    "request-id-1e400",
    "request-id-5000-digits",
    "protocol-version-1e400",
    "protocol-version-5000-digits",
    "request-id-nan",
    "null",
    "number-1e400",
    "type-1e400",
    "type-nested",
    "no-break-space",
    "type-list",
    "type-object",
]


@pytest.mark.parametrize(("raw", "code"), GARBAGE_BEFORE_CONNECT, ids=GARBAGE_IDS)
async def test_garbage_before_connect_gets_an_error_and_the_socket_waits_for_connect(
    server: RunningServer, raw: str | bytes, code: str
) -> None:
    sid = server.session()
    client = await WsClient.open(server.url)
    await client.send(raw)
    error = await client.next("error")
    # A number too big to parse makes the whole message invalid JSON, request ID included.
    request_id = 1 if isinstance(raw, str) and '"request_id": 1,' in raw and "0" * 5000 not in raw else None
    assert (error["code"], error["request_id"]) == (code, request_id), error
    assert error["message"] and len(error["message"]) < 500
    reply = await client.request({"type": "connect", "session_id": sid, "token": server.token(sid)})
    assert reply["type"] == "connected", reply
    await client.close()


async def test_a_request_before_connect_is_refused_and_closed(server: RunningServer) -> None:
    client = await WsClient.open(server.url)
    await client.send({"type": "publish", "request_id": 1})
    error = await client.next("error")
    assert error["code"] == "not_connected"
    assert (await client.closed())[0] == 4000


def _tampered(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "moderator"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


def _jwt_with_raw_times(session_id: str, exp: str, iat: str) -> str:
    """A JWT signed with the project's secret whose ``exp`` and ``iat`` are raw JSON number
    text, e.g. ``1e400`` (which decodes to infinity and ``json.dumps`` cannot write)."""
    claims = {
        "session_id": session_id,
        "role": "publisher",
        "iat": "@iat@",
        "exp": "@exp@",
        "scope": "session.connect",
        "iss": API_KEY,
        "ist": "project",
        "nonce": 1,
    }
    text = json.dumps(claims).replace('"@iat@"', iat).replace('"@exp@"', exp)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(text.encode())
    signature = b64(hmac.new(API_SECRET.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


async def test_bad_tokens_close_the_socket_with_a_documented_code(server: RunningServer) -> None:
    sid = server.session()
    other_sid = server.session()
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    now = int(time.time())
    foreign_project_sid = encode_session_id("88888888")
    expired = jwt.encode(
        {
            "session_id": sid,
            "role": "publisher",
            "iat": now - 100,
            "exp": now - 10,
            "scope": "session.connect",
            "iss": API_KEY,
            "ist": "project",
            "nonce": 1,
        },
        API_SECRET,
        algorithm="HS256",
    )
    cases = [
        ("garbage", sid, 4001),
        (expired, sid, 4002),
        (_tampered(server.token(sid)), sid, 4001),
        (server.token(sid)[:-4] + "AAAA", sid, 4001),
        (server.token(other_sid), sid, 4003),
        (generate_token("88888888", "9" * 40, foreign_project_sid), foreign_project_sid, 4001),
        (generate_token(API_KEY, "8" * 40, sid), sid, 4001),
        (generate_token(API_KEY, API_SECRET, encode_session_id(API_KEY)), None, 4004),
        (_jwt_with_raw_times(sid, exp="1e400", iat=str(now)), sid, 4001),
        (_jwt_with_raw_times(sid, exp=str(now + 600), iat="1e400"), sid, 4001),
        (_jwt_with_raw_times(sid, exp="-1e400", iat=str(now)), sid, 4001),
        (_t1_token(API_KEY, API_SECRET, sid, expire_time="1e400"), sid, 4001),
    ]
    for token, session_id, close_code in cases:
        client = await WsClient.open(server.url)
        target = (
            session_id
            if session_id is not None
            else jwt.decode(token, options={"verify_signature": False})["session_id"]
        )
        await client.send({"type": "connect", "request_id": 1, "session_id": target, "token": token})
        error = await client.next("error")
        assert error["request_id"] == 1 and error["message"]
        assert error["code"] == ("not_found" if close_code == 4004 else "invalid_token")
        code, reason = await client.closed()
        assert code == close_code, (token[:20], code, reason)
        assert reason
    assert await watcher.quiet() == []
    await watcher.request({"type": "signal", "signal_type": "t", "data": "still serving"})
    assert (await watcher.next("signal"))["data"] == "still serving"
    await watcher.close()


def _t1_token(api_key: str, api_secret: str, session_id: str, expire_time: str | None = None) -> str:
    """A legacy token as the SDK would sign it, without the SDK's session/key check."""
    now = int(time.time())
    expire = str(now + 600) if expire_time is None else expire_time
    payload = urllib.parse.urlencode(
        {"session_id": session_id, "create_time": now, "expire_time": expire, "role": "publisher"}
    )
    sig = hmac.new(api_secret.encode(), payload.encode(), hashlib.sha1).hexdigest()
    return "T1==" + base64.b64encode(f"partner_id={api_key}&sig={sig}:{payload}".encode()).decode()


async def test_a_token_of_another_existing_project_is_refused(server: RunningServer, tmp_path: Any) -> None:
    # A second, real project in the server's own database (as `salon project create` makes it).
    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        second = await store.create_project("second")
        # A session of the first project whose ID happens to name the second project's key.
        odd_sid = encode_session_id(second.api_key)
        await store.create_session(
            API_KEY, odd_sid, media_mode="routed", archive_mode="manual", location="", e2ee=False
        )
    finally:
        await store.close()
    sid = server.session()  # the first project's session
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    now = int(time.time())
    foreign_jwt = jwt.encode(
        {
            "session_id": sid,
            "role": "moderator",
            "iat": now,
            "exp": now + 600,
            "scope": "session.connect",
            "iss": second.api_key,
            "ist": "project",
            "nonce": 1,
        },
        second.api_secret,
        algorithm="HS256",
    )
    cases = [
        (foreign_jwt, sid, "does not belong to its project"),
        (_t1_token(second.api_key, second.api_secret, sid), sid, "does not belong to its project"),
        (generate_token(second.api_key, second.api_secret, odd_sid), odd_sid, "another project"),
    ]
    for token, session_id, reason in cases:
        client = await WsClient.open(server.url)
        await client.send({"type": "connect", "request_id": 1, "session_id": session_id, "token": token})
        error = await client.next("error")
        assert (error["request_id"], error["code"]) == (1, "invalid_token")
        assert reason in error["message"]
        code, close_reason = await client.closed()
        assert (code, close_reason) == (4003, error["message"]), token[:12]
    # The first project's clients saw nothing, and the second project's own sessions work.
    assert await watcher.quiet() == []
    await watcher.close()
    second_client = opentok.Client(second.api_key, second.api_secret, api_url=server.url)
    own_sid = second_client.create_session().session_id
    own = await WsClient.join(server.url, own_sid, second_client.generate_token(own_sid))
    assert own.connected is not None and own.connected["session_id"] == own_sid
    await own.close()


@pytest.mark.parametrize(
    ("message", "missing"),
    [
        ({"type": "connect", "request_id": 1, "session_id": "$SID"}, "token"),
        ({"type": "connect", "request_id": 1, "token": "$TOKEN"}, "session_id"),
        ({"type": "connect", "request_id": 1}, "session_id"),
        ({"type": "connect", "session_id": "$SID", "token": "$TOKEN"}, "request_id"),
    ],
)
async def test_a_connect_with_missing_fields_gets_an_error_and_may_try_again(
    server: RunningServer, message: dict[str, Any], missing: str
) -> None:
    sid = server.session()
    token = server.token(sid)
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    client = await WsClient.open(server.url)
    await client.send(json.dumps(message).replace("$SID", sid).replace("$TOKEN", token))
    error = await client.next("error")
    assert error["code"] == "invalid_message" and missing in error["message"], error
    assert error["request_id"] == message.get("request_id")
    # The socket stays open, waiting for a valid connect (§2.1); nobody else saw anything.
    assert await watcher.quiet() == []
    reply = await client.request({"type": "connect", "session_id": sid, "token": token})
    assert reply["type"] == "connected"
    assert (await watcher.next("connection_created"))["connection"]["connection_id"] == (
        reply["connection"]["connection_id"]
    )
    await client.close()
    await watcher.close()


async def test_a_frame_over_1_mib_closes_that_socket_and_nothing_else(server: RunningServer) -> None:
    sid = server.session()
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    big = await WsClient.join(server.url, sid, server.token(sid))
    stream_id = (await big.request({"type": "publish"}))["stream"]["stream_id"]
    assert (await watcher.next("stream_created"))["stream"]["stream_id"] == stream_id
    frame = json.dumps({"type": "signal", "request_id": 9, "signal_type": "t", "data": "x" * (1 << 20)})
    with contextlib.suppress(websockets.ConnectionClosed):
        await big.send(frame)
    assert (await big.closed())[0] == 1009
    ended = await watcher.next("stream_destroyed")
    assert (ended["stream_id"], ended["reason"]) == (stream_id, "clientDisconnected")
    gone = await watcher.next("connection_destroyed")
    assert (gone["connection_id"], gone["reason"]) == (big.connection_id, "clientDisconnected")
    assert [m for m in await watcher.quiet() if m["type"] == "signal"] == []
    # Before connect, too; and the server goes on serving.
    stranger = await WsClient.open(server.url)
    with contextlib.suppress(websockets.ConnectionClosed):
        await stranger.send("{" + " " * (1 << 20) + "}")
    assert (await stranger.closed())[0] == 1009
    late = await WsClient.join(server.url, sid, server.token(sid))
    await late.request({"type": "signal", "signal_type": "t", "data": "still serving"})
    assert (await watcher.next("signal"))["data"] == "still serving"
    await late.close()
    await watcher.close()


class _DatabaseDown:
    """A registry whose session lookups fail as the store's do when the database is down."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def session(self, session_id: str) -> None:
        raise ServerError("cannot read the database: OperationalError")


async def test_a_server_failure_during_connect_is_internal_error_then_1011(server: RunningServer) -> None:
    sid = server.session()
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    service = server.thread.server.config.app.state.signalling
    service.registry = _DatabaseDown(service.registry)
    try:
        client = await WsClient.open(server.url)
        await client.send({"type": "connect", "request_id": 1, "session_id": sid, "token": server.token(sid)})
        error = await client.next("error")
        assert (error["request_id"], error["code"]) == (1, "internal_error")
        assert "OperationalError" not in error["message"]  # details are for the server's log
        assert (await client.closed())[0] == 1011
    finally:
        service.registry = service.registry.inner
    assert await watcher.quiet() == []
    again = await WsClient.join(server.url, sid, server.token(sid))
    assert (await watcher.next("connection_created"))["connection"]["connection_id"] == again.connection_id
    await again.close()
    await watcher.close()


async def test_the_connect_deadline_is_not_reset_by_invalid_messages(tmp_path: Any) -> None:
    with start_server(tmp_path, connect_timeout=1.0) as thread:
        client = await WsClient.open(thread.url)
        sent = 0
        # Garbage every 0.3 s for up to 30 s: were the 1 s deadline reset by each message, the
        # socket would outlive the garbage; it is closed while the garbage still flows.
        with contextlib.suppress(websockets.ConnectionClosed):
            for sent in range(1, 101):  # noqa: B007
                await client.send("{garbage")
                await asyncio.sleep(0.3)
        code, _ = await client.closed()
        assert code == 4005
        assert sent < 100, "still open after 30 s of invalid messages"


async def test_a_fast_client_sending_a_burst_is_not_closed_as_slow(tmp_path: Any) -> None:
    # Far over the default rate limit (50/s, bursts of 200), which is not what this is about.
    with start_server(tmp_path, rate_limit=0) as thread:
        sid = RunningServer(thread.url, API_KEY, API_SECRET, thread).session()
        client = await WsClient.join(
            thread.url, sid, RunningServer(thread.url, API_KEY, API_SECRET, thread).token(sid)
        )
        # Many requests back to back: every reply and every signal comes back to this client.
        for i in range(1500):
            await client.ws.send(
                json.dumps({"type": "signal", "request_id": i, "signal_type": "t", "data": str(i)})
            )
        last = await client.next(lambda m: m["type"] == "signal" and m["data"] == "1499", timeout=30)
        assert last["from_connection_id"] == client.connection_id
        await client.close()


async def test_a_moderator_disconnecting_itself_mid_burst_is_handled(server: RunningServer) -> None:
    sid = server.session()
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    mod = await WsClient.join(server.url, sid, server.token(sid, "moderator"))
    await mod.ws.send(
        json.dumps({"type": "force_disconnect", "request_id": 1, "connection_id": mod.connection_id})
    )
    await mod.ws.send(json.dumps({"type": "signal", "request_id": 2, "signal_type": "t", "data": "late"}))
    assert (await mod.closed())[0] == 4009
    gone = await watcher.next("connection_destroyed")
    assert gone["reason"] == "forceDisconnected"
    assert [m for m in await watcher.quiet() if m["type"] == "signal"] == []
    await watcher.close()


async def test_many_bad_clients_do_not_disturb_a_good_one(server: RunningServer) -> None:
    sid = server.session()
    good = await WsClient.join(server.url, sid, server.token(sid))

    async def misbehave(i: int) -> None:
        client = await WsClient.open(server.url)
        await client.send(["{", "[]", "null", '{"type":"x"}'][i % 4])
        await client.send({"type": "connect", "request_id": 1, "session_id": sid, "token": "x" * 20})
        await client.closed()

    await asyncio.gather(*(misbehave(i) for i in range(20)))
    await good.request({"type": "signal", "signal_type": "t", "data": "fine"})
    assert (await good.next("signal"))["data"] == "fine"
    await good.close()


# -- slow consumers ----------------------------------------------------------------------------


async def test_clients_that_never_read_are_dropped_and_the_others_get_every_signal(tmp_path: Any) -> None:
    # Pinged every 0.5 s but with a long heartbeat timeout (and they answer every ping): only
    # their full outboxes can get them dropped.
    # No rate limit: the sender pipelines thousands of signals.
    with start_server(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=300.0, rate_limit=0) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        watcher = await WsClient.join(server.url, sid, server.token(sid))
        sender = await WsClient.join(server.url, sid, server.token(sid))
        stuck = [await StuckClient.join(server.url, sid, server.token(sid)) for _ in range(5)]
        stuck_ids = {client.connection_id for client in stuck}
        padding = "x" * 8000
        loop = asyncio.get_running_loop()
        try:
            sent = 0
            destroyed: dict[str, str] = {}
            started = loop.time()
            while set(destroyed) != stuck_ids:
                # Twice what fills five outboxes (1024 messages) and their TCP buffers.
                assert sent < 6000 and loop.time() - started < 120, (
                    f"{len(destroyed)} of 5 clients that never read were destroyed after {sent} signals"
                )
                for _ in range(50):
                    await sender.send(
                        {
                            "type": "signal",
                            "request_id": sent,
                            "signal_type": "t",
                            "data": f"{sent:06d}{padding}",
                        }
                    )
                    sent += 1
                last = await sender.next(lambda m, n=sent - 1: m.get("request_id") == n, timeout=60)
                assert last["type"] == "ack", last
                sender.messages.clear()
                destroyed.update(
                    (m["connection_id"], m["reason"])
                    for m in watcher.messages
                    if m["type"] == "connection_destroyed"
                )
            assert set(destroyed.values()) == {"clientDisconnected"}, destroyed

            # The reader got every signal, in order.
            def signals() -> list[str]:
                return [m["data"][:6] for m in watcher.messages if m["type"] == "signal"]

            while len(signals()) < sent:
                await asyncio.sleep(0.05)
                assert loop.time() - started < 180, f"the reader got {len(signals())} of {sent} signals"
            assert signals() == [f"{i:06d}" for i in range(sent)]

            # They are gone: not in a new connection's session, signals to them are refused,
            # and their TCP connections are closed (their buffers freed).
            late = await WsClient.join(server.url, sid, server.token(sid))
            assert late.connected is not None
            assert {c["connection_id"] for c in late.connected["connections"]} == {
                watcher.connection_id,
                sender.connection_id,
            }
            for connection_id in stuck_ids:
                refused = await sender.request({"type": "signal", "signal_type": "t", "to": connection_id})
                assert refused["code"] == "not_found", refused
            server_state = thread.server.server_state
            while len(server_state.connections) > 3:
                assert loop.time() - started < 180, f"{len(server_state.connections)} connections left"
                await asyncio.sleep(0.05)
            await late.close()
        finally:
            for client in stuck:
                await client.close()
            await sender.close()
            await watcher.close()


# -- rate and connection limits ----------------------------------------------------------------


async def test_requests_over_the_rate_limit_are_refused_and_a_client_that_keeps_going_is_closed(
    tmp_path: Any,
) -> None:
    with start_server(tmp_path, rate_limit=4, rate_burst=10) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        watcher = await WsClient.join(server.url, sid, server.token(sid))
        # connect took one token
        flood = await WsClient.join(server.url, sid, server.token(sid))
        await watcher.next("connection_created")
        # Fewer than 10 over: refused, not yet closed.
        for i in range(15):
            await flood.send({"type": "signal", "request_id": i, "signal_type": "t", "data": str(i)})
        replies = [await flood.next(lambda m, i=i: m.get("request_id") == i) for i in range(15)]
        acked = [r["request_id"] for r in replies if r["type"] == "ack"]
        refused = [r for r in replies if r["type"] == "error"]
        # 9 tokens left after connect, plus 4 a second while these went out.
        assert 9 <= len(acked) <= 14, replies
        assert acked == list(range(len(acked)))
        assert refused and {r["code"] for r in refused} == {"rate_limited"}, refused
        assert all(r["message"] for r in refused)
        # Refused signals were not carried out: the watcher got exactly the acked ones.
        got = []
        while len(got) < len(acked):
            got.append((await watcher.next("signal"))["data"])
        assert got == [str(i) for i in acked]
        assert [m for m in await watcher.quiet() if m["type"] == "signal"] == []
        # Backing off, the client is served again.
        await asyncio.sleep(1.5)
        reply = await flood.request({"type": "signal", "signal_type": "t", "data": "later"}, timeout=10)
        assert reply["type"] in ("ack", "error")
        while reply["type"] == "error":
            assert reply["code"] == "rate_limited", reply
            await asyncio.sleep(1.0)
            reply = await flood.request({"type": "signal", "signal_type": "t", "data": "later"})
        assert (await watcher.next("signal"))["data"] == "later"
        # Going on regardless: closed with 4029 once 10 more than allowed were refused.
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(100):
                await flood.send({"type": "signal", "request_id": 100 + i, "signal_type": "t", "data": "x"})
        code, reason = await flood.closed()
        assert (code, reason) == (4029, "too many requests")
        gone = await watcher.next("connection_destroyed")
        assert (gone["connection_id"], gone["reason"]) == (flood.connection_id, "clientDisconnected")
        await watcher.close()


async def test_a_flood_before_connect_is_refused_too(tmp_path: Any) -> None:
    with start_server(tmp_path, rate_limit=1, rate_burst=5) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        client = await WsClient.open(server.url)
        # 5 allowed, 3 refused: the connect finds the bucket 3 in debt (4 s from a token).
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(8):
                await client.send("{garbage")
            await client.send(
                {"type": "connect", "request_id": 1, "session_id": sid, "token": server.token(sid)}
            )
        refused = await client.next(lambda m: m.get("request_id") == 1)
        assert (refused["type"], refused["code"]) == ("error", "rate_limited"), refused
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(20):
                await client.send("{garbage")
        assert (await client.closed())[0] == 4029


async def test_connections_over_the_per_address_limit_are_refused_with_429(tmp_path: Any) -> None:
    with start_server(tmp_path, max_per_address=3) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        first = await WsClient.join(server.url, sid, server.token(sid))
        others = [await WsClient.open(server.url) for _ in range(2)]  # not connected yet: they count
        with pytest.raises(websockets.InvalidStatus) as refused:
            await WsClient.open(server.url)
        response = refused.value.response
        assert response.status_code == 429
        body = json.loads(response.body)
        assert body["code"] == "too_many_connections" and "3" in body["message"]
        # The others are unaffected; once one leaves, a new one gets in.
        await first.request({"type": "signal", "signal_type": "t", "data": "fine"})
        assert (await first.next("signal"))["data"] == "fine"
        await others[0].close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                late = await WsClient.join(server.url, sid, server.token(sid))
                break
            except websockets.InvalidStatus as exc:  # the server may not have seen the close yet
                assert exc.response.status_code == 429 and loop.time() < deadline
                await asyncio.sleep(0.1)
        assert (await first.next("connection_created"))["connection"]["connection_id"] == late.connection_id
        for client in (first, others[1], late):
            await client.close()


# -- shutdown ----------------------------------------------------------------------------------


async def test_at_shutdown_every_socket_connected_or_not_is_closed_with_1001(tmp_path: Any) -> None:
    thread = start_server(tmp_path, heartbeat_timeout=60.0).__enter__()
    stopped = False
    try:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        a = await WsClient.join(server.url, sid, server.token(sid))
        b = await WsClient.join(server.url, sid, server.token(sid))
        waiting = await WsClient.open(server.url)  # open, no connect yet
        await a.next("connection_created")
        await b.send({"type": "signal", "request_id": 1, "signal_type": "t", "data": "last words"})
        assert (await a.next("signal"))["data"] == "last words"
        stopped = True
        await asyncio.to_thread(thread.__exit__, None, None, None)
        for client in (a, b, waiting):
            assert await client.closed() == (1001, "server shutting down")
        assert not thread._thread.is_alive()
    finally:
        if not stopped:
            thread.__exit__(None, None, None)


async def test_a_reader_that_stops_reading_is_closed_with_4010_and_the_others_are_unaffected(
    tmp_path: Any,
) -> None:
    # A long close grace: the slow reader reads again later and must find the close frame.
    with start_server(tmp_path, heartbeat_timeout=300.0, rate_limit=0, close_grace=120.0) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        watcher = await WsClient.join(server.url, sid, server.token(sid))
        sender = await WsClient.join(server.url, sid, server.token(sid))
        # A real client that reads the reply to its connect, then nothing until told.
        # (With a small receive buffer: the kernel's would grow to tens of MB.)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = server.url.split("//", 1)[1].rsplit(":", 1)
        sock.connect((host, int(port)))
        slow = await websockets.connect(
            server.url.replace("http", "ws", 1) + "/signalling",
            sock=sock,
            max_queue=1,
            max_size=None,
            compression=None,  # compressed, the signals would hardly take room
        )
        await slow.send(
            json.dumps({"type": "connect", "request_id": 1, "session_id": sid, "token": server.token(sid)})
        )
        connected = json.loads(await slow.recv())
        assert connected["type"] == "connected", connected
        slow_id = connected["connection"]["connection_id"]
        link = thread.server.config.app.state.signalling.links[slow_id]
        padding = "x" * 8000
        sent = 0
        while not link.closed:
            assert sent < 6000, f"the slow reader's outbox did not overflow after {sent} signals"
            for _ in range(50):
                await sender.send(
                    {"type": "signal", "request_id": sent, "signal_type": "t", "data": f"{sent:06d}{padding}"}
                )
                sent += 1
            last = await sender.next(lambda m, n=sent - 1: m.get("request_id") == n, timeout=60)
            assert last["type"] == "ack", last
            sender.messages.clear()
        # Reading again, it gets the signals in order up to where its outbox overflowed (no
        # gap), then the close 4010.
        received: list[dict[str, Any]] = []
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(60):
                async for raw in slow:
                    received.append(json.loads(raw))
        assert slow.close_code == 4010 and slow.close_reason == "slow consumer"
        got = [m["data"][:6] for m in received if m["type"] == "signal"]
        assert 0 < len(got) < sent and got == [f"{i:06d}" for i in range(len(got))]
        gone = await watcher.next("connection_destroyed", timeout=30)
        assert (gone["connection_id"], gone["reason"]) == (slow_id, "clientDisconnected")
        # The others are unaffected: every signal reached the watcher, in order.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while sum(1 for m in watcher.messages if m["type"] == "signal") < sent:
            assert loop.time() < deadline, "the watcher did not get every signal"
            await asyncio.sleep(0.05)
        assert [m["data"][:6] for m in watcher.messages if m["type"] == "signal"] == [
            f"{i:06d}" for i in range(sent)
        ]
        await sender.close()
        await watcher.close()


async def test_every_closed_websocket_is_reported_for_a_prompt_collection(server: RunningServer) -> None:
    """``salon serve`` asks for a garbage collection after each WebSocket ends (a closed
    link's objects are garbage in reference cycles): the service tells ``on_link_closed``
    once per link, whether it had connected to a session or not."""
    service = server.thread.server.config.app.state.signalling  # type: ignore[union-attr]
    closed: list[float] = []
    service.on_link_closed = lambda: closed.append(time.monotonic())
    try:
        sid = server.session()
        joined = await WsClient.open(server.url)
        reply = await joined.request({"type": "connect", "session_id": sid, "token": server.token(sid)})
        assert reply["type"] == "connected", reply
        bare = await WsClient.open(server.url)
        assert closed == []
        await joined.close()
        await bare.close()
        deadline = time.monotonic() + 10
        while len(closed) < 2:
            assert time.monotonic() < deadline, f"on_link_closed called {len(closed)} times, not 2"
            await asyncio.sleep(0.02)
        assert len(closed) == 2
    finally:
        service.on_link_closed = None


async def test_subscription_preferences_round_trip_and_bad_ones_change_nothing(server: RunningServer) -> None:
    sid = server.session()
    pub = await WsClient.join(server.url, sid, server.token(sid))
    stream_id = (await pub.request({"type": "publish"}))["stream"]["stream_id"]
    sub = await WsClient.join(server.url, sid, server.token(sid, "subscriber"))
    other = await WsClient.join(server.url, sid, server.token(sid, "subscriber"))
    reply = await sub.request(
        {
            "type": "subscribe",
            "stream_id": stream_id,
            "preferred_resolution": {"width": 320, "height": 240},
            "preferred_frame_rate": 15,
        }
    )
    assert reply["type"] == "subscribed", reply
    subscription_id = reply["subscription_id"]
    service = server.thread.server.config.app.state.signalling
    live = service.live_session(sid)

    def preferences() -> tuple[object, object]:
        subscription = live.subscriptions[subscription_id]
        return subscription.preferred_resolution, subscription.preferred_frame_rate

    assert preferences() == ((320, 240), 15.0)
    change = {"type": "set_subscription_preferences", "subscription_id": subscription_id}
    assert (await sub.request(change | {"preferred_frame_rate": 7.5}))["type"] == "ack"
    assert preferences() == (None, 7.5)  # both are replaced: no resolution now
    ack = await sub.request(change | {"preferred_resolution": {"width": 1280, "height": 720}})
    assert ack["type"] == "ack"
    assert preferences() == ((1280, 720), None)

    bad: list[tuple[dict[str, object], str]] = [
        ({"preferred_frame_rate": 0}, "preferred_frame_rate"),
        ({"preferred_frame_rate": 1000}, "preferred_frame_rate"),
        ({"preferred_frame_rate": "30"}, "preferred_frame_rate"),
        ({"preferred_resolution": {"width": 0, "height": 240}}, "preferred_resolution.width"),
        ({"preferred_resolution": {"width": 320, "height": 99999}}, "preferred_resolution.height"),
        ({"preferred_resolution": {"width": 320.5, "height": 240}}, "preferred_resolution.width"),
        ({"preferred_resolution": {"width": 320}}, "preferred_resolution.height"),
        ({"preferred_resolution": [320, 240]}, "preferred_resolution"),
        ({"preferred_bitrate": 100}, "preferred_bitrate"),
    ]
    for fields, where in bad:
        error = await sub.request(change | fields)
        assert (error["type"], error["code"]) == ("error", "invalid_message"), (fields, error)
        assert error["message"].startswith(f"{where}:"), (fields, error)
        assert preferences() == ((1280, 720), None), fields
    refused = await sub.request(
        {"type": "subscribe", "stream_id": stream_id, "preferred_resolution": {"width": -1, "height": 1}}
    )
    assert refused["code"] == "invalid_message"
    assert list(live.subscriptions) == [subscription_id]
    # Another connection's subscription, or none: not_found, nothing changes.
    for client, target in ((other, subscription_id), (sub, "no-such-subscription")):
        error = await client.request(
            {"type": "set_subscription_preferences", "subscription_id": target, "preferred_frame_rate": 5}
        )
        assert error["code"] == "not_found", error
    assert preferences() == ((1280, 720), None)
    told = [m["type"] for m in await pub.quiet(0.3)]
    assert told == ["connection_created", "connection_created"]  # and nothing of the preferences
    for client in (pub, sub, other):
        await client.close()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """One unmasked server frame: (opcode, RSV1 set, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, bool(first & 0x40), await reader.readexactly(length)


async def test_small_messages_go_uncompressed_on_a_deflate_connection(server: RunningServer) -> None:
    """permessage-deflate negotiated: a small signal comes uncompressed (RSV1 unset, as RFC 7692
    allows: deflating it costs the server more than it saves), a large one compressed, and
    both read the same after inflating (the compression context carries on across them)."""
    sid = server.session()
    sender = await WsClient.join(server.url, sid, server.token(sid))
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /signalling HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode("latin-1").lower()
    assert head.startswith("http/1.1 101") and "permessage-deflate" in head, head
    inflate = zlib.decompressobj(-15)

    def send(message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        assert len(payload) < 65536
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload).to_bytes(2, "big") if len(payload) >= 126 else b""
        length = 0x80 | (126 if size else len(payload))
        writer.write(bytes((0x81, length)) + size + mask + masked)

    async def next_of(kind: str) -> tuple[bool, dict[str, Any]]:
        async with asyncio.timeout(30):
            while True:
                opcode, compressed, payload = await _read_frame(reader)
                assert opcode == 0x1, f"unexpected opcode {opcode}"
                text = inflate.decompress(payload + b"\x00\x00\xff\xff") if compressed else payload
                message = json.loads(text)
                if message["type"] == "ping":
                    continue
                if message["type"] == kind:
                    return compressed, message

    send({"type": "connect", "request_id": 1, "session_id": sid, "token": server.token(sid)})
    await next_of("connected")
    large = "".join(f"{i:04d}" for i in range(1000))
    for data in ("hi", large, "hello again"):
        assert (await sender.request({"type": "signal", "signal_type": "t", "data": data}))["type"] == "ack"
    results = [await next_of("signal") for _ in range(3)]
    assert [(compressed, m["data"]) for compressed, m in results] == [
        (False, "hi"),
        (True, large),
        (False, "hello again"),
    ]
    writer.close()
    await sender.close()
