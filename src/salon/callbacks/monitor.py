"""Session monitoring as OpenTok posts it: signalling events in, callback bodies out (sans-I/O).

The bodies are those of OpenTok's session-monitoring guide: ``connectionCreated``,
``connectionDestroyed`` (with ``reason``), ``streamCreated``, ``streamDestroyed`` (with
``reason``), and ``sessionCreated`` / ``sessionDestroyed`` when the first client connects and
the last leaves (their shape is not documented: the common fields ``sessionId``,
``projectId``, ``event``, ``timestamp``). A stream is reported once the others are told of it
(its media flows); a stream that never got that far is not reported destroyed either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from salon.protocol import (
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    ConnectionInfo,
    ServerMessage,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamInfo,
    StreamReason,
)
from salon.store import NewCallback

__all__ = ["SESSION_EVENTS", "SessionMonitor", "callback_reason"]

#: Every session-monitoring event, in the order a session's life sends them.
SESSION_EVENTS = (
    "sessionCreated",
    "connectionCreated",
    "streamCreated",
    "streamDestroyed",
    "connectionDestroyed",
    "sessionDestroyed",
)


def callback_reason(reason: StreamReason | str) -> str:
    """A stream's reason as OpenTok's callbacks name it: they have no ``unpublished`` (a client
    that unpublishes is reported as ``clientDisconnected``, as OpenTok does)."""
    return "clientDisconnected" if reason == StreamReason.UNPUBLISHED else str(reason)


def _connection(info: ConnectionInfo) -> dict[str, Any]:
    return {"id": info.connection_id, "createdAt": info.created_at, "data": info.data}


@dataclass
class _LiveSession:
    api_key: str
    connections: dict[str, ConnectionInfo] = field(default_factory=dict)
    streams: dict[str, StreamInfo] = field(default_factory=dict)


class SessionMonitor:
    """Keeps what the callbacks need of each live session (connections and streams), and turns
    each observed change into the callback to send."""

    def __init__(self) -> None:
        self._sessions: dict[str, _LiveSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def session_started(
        self, session_id: str, api_key: str, now: int, *, created: bool = True
    ) -> list[NewCallback]:
        """A session has its first connection here. ``created=False``: not the first anywhere
        (a node of a cluster, where :meth:`session_event` reports the session's life)."""
        self._sessions[session_id] = _LiveSession(api_key)
        return [self.session_event(session_id, api_key, "sessionCreated", now)] if created else []

    def session_ended(
        self, session_id: str, api_key: str, now: int, *, destroyed: bool = True
    ) -> list[NewCallback]:
        if self._sessions.pop(session_id, None) is None or not destroyed:
            return []
        return [self.session_event(session_id, api_key, "sessionDestroyed", now)]

    def session_event(self, session_id: str, api_key: str, event: str, now: int) -> NewCallback:
        """``sessionCreated`` or ``sessionDestroyed``, whatever this monitor saw of the session
        (in a cluster, the node that saw the first connection anywhere arrive, or the last
        leave, reports it)."""
        return self._callback(session_id, api_key, event, now, {})

    def delivered(self, session_id: str, message: ServerMessage, now: int) -> list[NewCallback]:
        live = self._sessions.get(session_id)
        if live is None:
            return []
        if isinstance(message, ConnectionCreatedEvent):
            live.connections[message.connection.connection_id] = message.connection
            fields: dict[str, Any] = {"connection": _connection(message.connection)}
            return [self._callback(session_id, live.api_key, "connectionCreated", now, fields)]
        if isinstance(message, ConnectionDestroyedEvent):
            info = live.connections.pop(message.connection_id, None)
            if info is None:
                return []
            fields = {"reason": str(message.reason), "connection": _connection(info)}
            return [self._callback(session_id, live.api_key, "connectionDestroyed", now, fields)]
        if isinstance(message, StreamCreatedEvent):
            if message.stream.stream_id in live.streams:
                return []
            live.streams[message.stream.stream_id] = message.stream
            return [self._stream(session_id, live, "streamCreated", message.stream, now, {})]
        if isinstance(message, StreamDestroyedEvent):
            stream = live.streams.pop(message.stream_id, None)
            if stream is None:
                return []
            reason = {"reason": callback_reason(message.reason)}
            return [self._stream(session_id, live, "streamDestroyed", stream, now, reason)]
        return []

    def reaped(
        self,
        session_id: str,
        api_key: str,
        connections: list[ConnectionInfo],
        streams: list[StreamInfo],
        now: int,
    ) -> list[NewCallback]:
        """The callbacks of a dead cluster node's connections and streams, reported gone by
        the node that noticed (``networkDisconnected``): each stream, then each connection."""
        live = _LiveSession(api_key, {c.connection_id: c for c in connections})
        reason = {"reason": "networkDisconnected"}
        return [
            *(self._stream(session_id, live, "streamDestroyed", s, now, reason) for s in streams),
            *(
                self._callback(
                    session_id, api_key, "connectionDestroyed", now, {**reason, "connection": _connection(c)}
                )
                for c in connections
            ),
        ]

    def _stream(
        self,
        session_id: str,
        live: _LiveSession,
        event: str,
        stream: StreamInfo,
        now: int,
        extra: dict[str, Any],
    ) -> NewCallback:
        connection = live.connections.get(stream.connection_id)
        body: dict[str, Any] = {
            **extra,
            "stream": {
                "id": stream.stream_id,
                "connection": (
                    _connection(connection)
                    if connection is not None
                    else {"id": stream.connection_id, "createdAt": None, "data": ""}
                ),
                "createdAt": stream.created_at,
                "name": stream.name,
                "videoType": None if stream.video_type is None else stream.video_type.value,
            },
        }
        if not stream.has_video and stream.video_type is None:
            del body["stream"]["videoType"]  # undefined for audio-only streams, as in OpenTok
        return self._callback(session_id, live.api_key, event, now, body)

    @staticmethod
    def _callback(session_id: str, api_key: str, event: str, now: int, fields: dict[str, Any]) -> NewCallback:
        body = {"sessionId": session_id, "projectId": api_key, "event": event, "timestamp": now, **fields}
        return NewCallback(
            api_key=api_key,
            kind="session",
            order_key=session_id,
            body=json.dumps(body, separators=(",", ":")),
            created_at=now,
        )
