"""An older client against a newer server: the Python SDK connects, takes replies and
events that carry fields it does not know, error codes and reasons it does not know, and
skips message types it does not know (docs/protocol.md §14). The newer server is a scripted
WebSocket server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve

from salon.client import (
    Connected,
    ConnectionCreated,
    ConnectionDropped,
    Event,
    RequestRefused,
    Session,
    SessionEndReason,
    SignalReceived,
    StreamDropped,
    StreamReceived,
)

SESSION_ID = "1_newer-server"
STREAM = {
    "stream_id": "s-old",
    "connection_id": "c-other",
    "created_at": 2,
    "name": "cam",
    "has_audio": True,
    "has_video": True,
    "video_type": "camera",
    "width": 640,
    "height": 480,
    "frame_rate": 30.0,
    "simulcast_layers": [{"rid": "h"}],
}


async def _newer_server(ws: ServerConnection, received: list[dict[str, Any]]) -> None:
    """Speak protocol version 1 as a later server would: extra fields everywhere and a
    message type the client has never heard of."""
    with_extras = {"future_field": {"nested": [1, 2]}}
    async for raw in ws:
        message = json.loads(raw)
        received.append(message)
        if message["type"] == "connect":
            await ws.send(
                json.dumps(
                    {
                        "type": "connected",
                        "request_id": message["request_id"],
                        "session_id": SESSION_ID,
                        "connection": {"connection_id": "c-me", "created_at": 1, "data": "", "region": "eu"},
                        "role": "publisher",
                        "connections": [
                            {"connection_id": "c-other", "created_at": 1, "data": "x", "region": "us"}
                        ],
                        "streams": [STREAM],
                        "heartbeat_interval": 30.0,
                        "heartbeat_timeout": 90.0,
                        "ice_servers": [
                            {"urls": ["stun:127.0.0.1:3478"], "username": None, "credential": None, "ttl": 60}
                        ],
                        "server_version": "2.0",
                        **with_extras,
                    }
                )
            )
        elif message["type"] == "signal":
            # Events of the session first (not right after `connected`: the order of events
            # racing the end of connect() is not what this test is about).
            await ws.send(json.dumps({"type": "recording_started", "recording_id": "r1"}))
            await ws.send(
                json.dumps(
                    {
                        "type": "connection_created",
                        "connection": {"connection_id": "c-new", "created_at": 3, "data": "", "region": "eu"},
                        **with_extras,
                    }
                )
            )
            await ws.send(json.dumps({"type": "ack", "request_id": message["request_id"], **with_extras}))
            await ws.send(
                json.dumps(
                    {
                        "type": "signal",
                        "signal_type": message["signal_type"],
                        "data": message["data"],
                        "from_connection_id": "c-me",
                        "sequence": 1,
                    }
                )
            )
        elif message["type"] == "force_unpublish":
            # A code this client does not know, then the end of a stream and of a connection
            # for reasons it does not know either.
            await ws.send(
                json.dumps(
                    {
                        "type": "error",
                        "request_id": message["request_id"],
                        "code": "quota_exceeded",
                        "message": "the project's quota is used up",
                    }
                )
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "stream_destroyed",
                        "stream_id": "s-old",
                        "connection_id": "c-other",
                        "reason": "archivedAway",
                    }
                )
            )
            await ws.send(
                json.dumps({"type": "connection_destroyed", "connection_id": "c-other", "reason": "migrated"})
            )


async def test_an_older_client_survives_a_newer_server() -> None:
    received: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        try:
            await _newer_server(ws, received)
        except websockets.ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = Session(
            SESSION_ID, "token", f"http://127.0.0.1:{port}", reconnect=False, connect_timeout=30
        )
        events = session.events()
        await session.connect()
        try:
            # Generous bounds for a loaded machine; a reply the client cannot parse would
            # leave the request waiting for its 20 s timeout instead.
            async with asyncio.timeout(15):
                await session.signal("chat", "hello")
            seen: list[Event] = []
            async with asyncio.timeout(15):
                async for event in events:
                    seen.append(event)
                    if isinstance(event, SignalReceived):
                        break
        finally:
            await session.disconnect()

    connected = [e for e in seen if isinstance(e, Connected)]
    assert len(connected) == 1 and connected[0].connection.connection_id == "c-me", seen
    assert [e.connection.connection_id for e in seen if isinstance(e, ConnectionCreated)] == [
        "c-other",
        "c-new",
    ]
    streams = [e.stream for e in seen if isinstance(e, StreamReceived)]
    assert [s.stream_id for s in streams] == ["s-old"], seen
    assert seen[-1] == SignalReceived(type="chat", data="hello", from_connection_id="c-me")
    # The client says which version it speaks (§14: what a later server will go by).
    connect = received[0]
    assert connect["type"] == "connect" and connect["protocol_version"] == 1


async def test_unknown_error_codes_and_reasons_from_a_newer_server() -> None:
    async def handler(ws: ServerConnection) -> None:
        try:
            await _newer_server(ws, [])
        except websockets.ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = Session(
            SESSION_ID, "token", f"http://127.0.0.1:{port}", reconnect=False, connect_timeout=30
        )
        events = session.events()
        await session.connect()
        try:
            # The refusal comes at once; a reply the client could not parse would leave the
            # request waiting for the SDK's 20 s request timeout (then ConnectionLost).
            try:
                async with asyncio.timeout(15):
                    await session.force_unpublish("s-old")
            except RequestRefused as exc:
                refused = exc
            else:
                raise AssertionError("force_unpublish was not refused")
            seen: list[Event] = []
            async with asyncio.timeout(15):
                async for event in events:
                    seen.append(event)
                    if isinstance(event, ConnectionDropped):
                        break
            streams_left, connections_left = session.streams, session.connections
        finally:
            await session.disconnect()

    assert type(refused) is RequestRefused, refused
    assert refused.code == "quota_exceeded" and refused.server_message == "the project's quota is used up"
    assert "quota_exceeded" in str(refused)
    dropped = [e for e in seen if isinstance(e, StreamDropped)]
    assert [(e.stream.stream_id, e.reason) for e in dropped] == [("s-old", "archivedAway")], seen
    assert seen[-1] == ConnectionDropped(connection=seen[-1].connection, reason="migrated")
    assert seen[-1].connection.connection_id == "c-other"
    assert "s-old" not in streams_left and "c-other" not in connections_left


def _subject(event: Event) -> str | None:
    """The connection or stream an event is about."""
    if isinstance(event, Connected | ConnectionCreated | ConnectionDropped):
        return event.connection.connection_id
    if isinstance(event, StreamReceived | StreamDropped):
        return event.stream.stream_id
    return None


def _connected(request_id: int) -> dict[str, Any]:
    return {
        "type": "connected",
        "request_id": request_id,
        "session_id": SESSION_ID,
        "connection": {"connection_id": "c-me", "created_at": 1, "data": ""},
        "role": "publisher",
        "connections": [{"connection_id": "c-other", "created_at": 1, "data": "x"}],
        "streams": [STREAM],
        "heartbeat_interval": 30.0,
        "heartbeat_timeout": 90.0,
        "ice_servers": [],
    }


async def _burst_after_connected(ws: ServerConnection) -> None:
    """Answer ``connect`` with ``connected`` and, in the same burst, a connection that joins
    and the end of a stream of the ``connected`` snapshot; echo signals."""
    async for raw in ws:
        message = json.loads(raw)
        if message["type"] == "connect":
            burst = [
                _connected(message["request_id"]),
                {
                    "type": "connection_created",
                    "connection": {"connection_id": "c-new", "created_at": 3, "data": ""},
                },
                {
                    "type": "stream_destroyed",
                    "stream_id": "s-old",
                    "connection_id": "c-other",
                    "reason": "unpublished",
                },
            ]
            # Written at once, so the client reads the three frames together.
            for frame in burst:
                ws.protocol.send_text(json.dumps(frame).encode())
            ws.send_data()
        elif message["type"] == "signal":
            await ws.send(
                json.dumps(
                    {
                        "type": "signal",
                        "signal_type": message["signal_type"],
                        "data": message["data"],
                        "from_connection_id": "c-me",
                    }
                )
            )
            await ws.send(json.dumps({"type": "ack", "request_id": message["request_id"]}))


async def test_events_right_after_connected_follow_the_snapshot() -> None:
    async def handler(ws: ServerConnection) -> None:
        try:
            await _burst_after_connected(ws)
        except websockets.ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = Session(
            SESSION_ID, "token", f"http://127.0.0.1:{port}", reconnect=False, connect_timeout=30
        )
        events = session.events()
        await session.connect()
        try:
            # The signal comes back after the burst: every event of the burst is in by then.
            async with asyncio.timeout(15):
                await session.signal("sync")
            seen: list[Event] = []
            async with asyncio.timeout(15):
                async for event in events:
                    seen.append(event)
                    if isinstance(event, SignalReceived):
                        break
            streams, connections = session.streams, session.connections
        finally:
            await session.disconnect()

    described = [(type(e).__name__, _subject(e)) for e in seen]
    assert described == [
        ("Connected", "c-me"),
        ("ConnectionCreated", "c-other"),
        ("StreamReceived", "s-old"),
        ("ConnectionCreated", "c-new"),
        ("StreamDropped", "s-old"),
        ("SignalReceived", None),
    ], described
    assert streams == {}, streams
    assert sorted(connections) == ["c-new", "c-other"], connections


async def test_a_disconnection_right_after_connected_ends_the_session() -> None:
    async def handler(ws: ServerConnection) -> None:
        message = json.loads(await ws.recv())
        # connected, session_disconnected and the close frame in one write. The close code
        # (normal closure) does not say why: only session_disconnected does, so it must be
        # taken in before the end of the link is.
        ws.protocol.send_text(json.dumps(_connected(message["request_id"])).encode())
        disconnected = {"type": "session_disconnected", "reason": "forceDisconnected"}
        ws.protocol.send_text(json.dumps(disconnected).encode())
        ws.protocol.send_close(1000, "bye")
        ws.send_data()
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = Session(
            SESSION_ID, "token", f"http://127.0.0.1:{port}", reconnect=False, connect_timeout=30
        )
        await session.connect()
        try:
            async with asyncio.timeout(15):
                reason = await session.wait_disconnected()
        finally:
            await session.disconnect()
    assert reason is SessionEndReason.FORCE_DISCONNECTED
