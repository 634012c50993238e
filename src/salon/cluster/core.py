"""The cluster's sans-I/O parts: what goes on the bus, what a node makes of it.

Every change to a session made on any node is one *batch*: the :data:`Action` list of a
:class:`~salon.signalling.session.Session` method, encoded by :func:`encode_batch` into one
entry of the session's Redis Stream, with the *presence* updates (which connection is on which
node, the announced streams) that the same transaction writes into the session's hashes. Every
node with clients in the session reads the stream in order and, for each batch, updates its
mirror of the session (:func:`apply_to_mirror`, silently) and delivers the messages to its own
clients; :class:`Delivered` keeps a broadcast lifecycle event (a connection or stream created
or destroyed) from reaching a node's clients twice when two nodes report the same change
(e.g. two survivors of a dead node).

Nothing here touches a socket or Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from salon.protocol import (
    CloseCode,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    ConnectionInfo,
    DisconnectReason,
    MuteAllChangedEvent,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamInfo,
    StreamPropertyChangedEvent,
    StreamReason,
    VideoType,
    server_message_adapter,
)
from salon.signalling.session import Action, Close, Connection, Deliver, Session, Stream
from salon.tokens import Role

__all__ = [
    "Batch",
    "Delivered",
    "NodeRecord",
    "Presence",
    "Snapshot",
    "apply_to_mirror",
    "decode_batch",
    "encode_batch",
    "load_snapshot",
    "reap_actions",
    "split_local",
]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node writes into Redis with every heartbeat (``salon node list`` shows it)."""

    name: str
    address: str
    load: int
    draining: bool
    incarnation: str = ""
    #: Where clients reach the node (``--node-url``; "" when not given): placement sends
    #: new clients there.
    url: str = ""

    def dumps(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "address": self.address,
                "load": self.load,
                "draining": self.draining,
                "incarnation": self.incarnation,
                "url": self.url,
            }
        )

    @classmethod
    def loads(cls, text: str) -> NodeRecord:
        raw = json.loads(text)
        return cls(
            name=str(raw["name"]),
            address=str(raw.get("address", "")),
            load=int(raw.get("load", 0)),
            draining=bool(raw.get("draining", False)),
            incarnation=str(raw.get("incarnation", "")),
            url=str(raw.get("url", "")),
        )


@dataclass(slots=True)
class Presence:
    """The writes into a session's hashes that go with a batch: connection ID -> record
    (``{"node", "role", "info"}``) and stream ID -> record (``{"info", "layout"}``)."""

    connections: dict[str, str] = field(default_factory=dict)
    gone_connections: list[str] = field(default_factory=list)
    streams: dict[str, str] = field(default_factory=dict)
    gone_streams: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Batch:
    """One decoded stream entry: the node it came from, its actions, and the records of the
    streams it created or changed (so a mirror gets their layout classes too)."""

    origin: str
    actions: list[tuple[Action, str | None]]  # (action, the message's JSON text for a Deliver)
    streams: dict[str, dict[str, object]]
    connections: dict[str, dict[str, object]]


def _stream_record(stream: Stream) -> str:
    return json.dumps({"info": stream.info().model_dump(mode="json"), "layout": stream.layout_class_list})


def _connection_record(conn: Connection, node: str) -> str:
    return json.dumps(
        {"node": conn.node or node, "role": conn.role.value, "info": conn.info().model_dump(mode="json")}
    )


def encode_batch(
    node: str, session: Session | None, actions: Iterable[Action]
) -> tuple[dict[str, str], Presence]:
    """The stream entry's fields for ``actions`` made on ``node``, and the presence writes.
    ``session`` (as it is after the change) gives the records of what was created or changed;
    None when only destructions are reported (a dead node's connections)."""
    items: list[dict[str, object]] = []
    presence = Presence()
    for action in actions:
        if isinstance(action, Close):
            items.append({"close": action.connection_id, "code": int(action.code), "reason": action.reason})
            continue
        message = action.message
        items.append(
            {
                "m": message.model_dump_json(),
                "to": None if action.to is None else list(action.to),
                "x": action.exclude,
            }
        )
        match message:
            case ConnectionCreatedEvent() if session is not None:
                conn = session.connections.get(message.connection.connection_id)
                if conn is not None:
                    presence.connections[conn.connection_id] = _connection_record(conn, node)
            case ConnectionDestroyedEvent():
                presence.gone_connections.append(message.connection_id)
                presence.connections.pop(message.connection_id, None)
            case StreamCreatedEvent() | StreamPropertyChangedEvent() if session is not None:
                sid = (
                    message.stream.stream_id if isinstance(message, StreamCreatedEvent) else message.stream_id
                )
                stream = session.streams.get(sid)
                if stream is not None and stream.announced:
                    presence.streams[sid] = _stream_record(stream)
            case StreamDestroyedEvent() if action.to is None:
                presence.gone_streams.append(message.stream_id)
                presence.streams.pop(message.stream_id, None)
            case _:
                pass
    fields = {
        "origin": node,
        "actions": json.dumps(items),
        "streams": json.dumps({k: json.loads(v) for k, v in presence.streams.items()}),
        "connections": json.dumps({k: json.loads(v) for k, v in presence.connections.items()}),
    }
    return fields, presence


def decode_batch(fields: Mapping[str, str]) -> Batch:
    """The batch of a stream entry (:func:`encode_batch`)."""
    actions: list[tuple[Action, str | None]] = []
    for item in json.loads(fields["actions"]):
        if "close" in item:
            actions.append((Close(item["close"], CloseCode(item["code"]), item["reason"]), None))
            continue
        text = item["m"]
        message = server_message_adapter.validate_json(text)
        to = None if item["to"] is None else tuple(item["to"])
        actions.append((Deliver(message, to=to, exclude=item["x"]), text))
    return Batch(
        origin=fields.get("origin", ""),
        actions=actions,
        streams=json.loads(fields.get("streams", "{}")),
        connections=json.loads(fields.get("connections", "{}")),
    )


def split_local(actions: list[Action], is_local: Callable[[str], bool]) -> tuple[list[Action], list[Action]]:
    """(carried out here at once, published on the bus). A connection of this node (one with
    a link here: ``is_local``) that an action closes gets its last messages and the close at
    once (its link is gone by the time the bus brings them back); everything else, including
    every action for another node's connections, goes through the bus, in order."""
    closing = {a.connection_id for a in actions if isinstance(a, Close) and is_local(a.connection_id)}
    if not closing:
        return [], list(actions)
    now: list[Action] = []
    bus: list[Action] = []
    for action in actions:
        if isinstance(action, Close):
            (now if action.connection_id in closing else bus).append(action)
        elif action.to is not None and set(action.to) <= closing:
            now.append(action)
        else:
            bus.append(action)
    return now, bus


def _stream_from(record: Mapping[str, object]) -> Stream:
    info = StreamInfo.model_validate(record["info"])
    layout = record.get("layout") or []
    assert isinstance(layout, list)
    return Stream(
        stream_id=info.stream_id,
        connection_id=info.connection_id,
        created_at=info.created_at,
        name=info.name,
        has_audio=info.has_audio,
        has_video=info.has_video,
        video_type=VideoType(info.video_type) if info.video_type is not None else None,
        width=info.width,
        height=info.height,
        frame_rate=info.frame_rate,
        layout_class_list=[str(c) for c in layout],
        announced=True,
    )


def _connection_from(record: Mapping[str, object], default_node: str) -> Connection:
    info = ConnectionInfo.model_validate(record["info"])
    return Connection(
        info.connection_id,
        Role(str(record.get("role", Role.PUBLISHER.value))),
        info.data,
        info.created_at,
        last_seen=0.0,
        node=str(record.get("node") or default_node),
    )


def apply_to_mirror(session: Session, batch: Batch, here: str) -> list[str]:
    """Bring this node's copy of the session up to date with a batch, silently (no actions).
    Idempotent: what the origin node already did to its own copy is not done again. Returns
    the IDs of this node's own connections that the batch destroyed (forced out from another
    node): the caller cleans them up."""
    gone_here: list[str] = []
    for action, _text in batch.actions:
        if not isinstance(action, Deliver):
            continue
        message = action.message
        match message:
            case ConnectionCreatedEvent():
                cid = message.connection.connection_id
                if cid not in session.connections:
                    known = batch.connections.get(cid)
                    info = {"info": message.connection.model_dump(mode="json")}
                    mirrored = _connection_from(known or info, batch.origin)
                    if mirrored.node != here:
                        session.connections[cid] = mirrored
            case ConnectionDestroyedEvent():
                existing = session.connections.get(message.connection_id)
                if existing is not None:
                    if existing.node is None:
                        gone_here.append(message.connection_id)
                    session.leave(message.connection_id, DisconnectReason(message.reason))
            case StreamCreatedEvent():
                if message.stream.stream_id not in session.streams:
                    known_stream = batch.streams.get(message.stream.stream_id)
                    fallback = {"info": message.stream.model_dump(mode="json")}
                    session.streams[message.stream.stream_id] = _stream_from(known_stream or fallback)
            case StreamPropertyChangedEvent():
                changed = batch.streams.get(message.stream_id)
                stream = session.streams.get(message.stream_id)
                if changed is not None and stream is not None:
                    fresh = _stream_from(changed)
                    stream.has_audio, stream.has_video = fresh.has_audio, fresh.has_video
                    stream.name, stream.video_type = fresh.name, fresh.video_type
                    stream.width, stream.height = fresh.width, fresh.height
            case StreamDestroyedEvent() if action.to is None:
                session.end_stream(message.stream_id, StreamReason(message.reason))
            case MuteAllChangedEvent():
                session.mute_all_active = message.active
                session.mute_all_excluded = frozenset(message.excluded_stream_ids)
            case _:
                pass
    return gone_here


@dataclass(slots=True)
class Delivered:
    """The connections and streams this node's clients were told of, for one session: a
    broadcast created/destroyed event is delivered only if it changes this view."""

    connections: set[str] = field(default_factory=set)
    streams: set[str] = field(default_factory=set)

    def admit(self, action: Deliver) -> bool:
        if action.to is not None:
            return True
        message = action.message
        match message:
            case ConnectionCreatedEvent():
                return _add(self.connections, message.connection.connection_id)
            case ConnectionDestroyedEvent():
                return _remove(self.connections, message.connection_id)
            case StreamCreatedEvent():
                return _add(self.streams, message.stream.stream_id)
            case StreamDestroyedEvent():
                return _remove(self.streams, message.stream_id)
            case _:
                return True


def _add(known: set[str], key: str) -> bool:
    if key in known:
        return False
    known.add(key)
    return True


def _remove(known: set[str], key: str) -> bool:
    if key not in known:
        return False
    known.discard(key)
    return True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A session's presence hashes and its stream's last entry ID, read in one transaction."""

    connections: dict[str, str]
    streams: dict[str, str]
    last_id: str


def load_snapshot(session: Session, snapshot: Snapshot, here: str) -> Delivered:
    """Fill a new mirror with the other nodes' connections and the announced streams; the
    view of what this node's clients will be told of in ``connected``."""
    delivered = Delivered()
    for text in snapshot.connections.values():
        conn = _connection_from(json.loads(text), "")
        delivered.connections.add(conn.connection_id)
        if conn.node != here and conn.connection_id not in session.connections:
            session.connections[conn.connection_id] = conn
    for text in snapshot.streams.values():
        stream = _stream_from(json.loads(text))
        delivered.streams.add(stream.stream_id)
        session.streams.setdefault(stream.stream_id, stream)
    for conn in session.connections.values():
        delivered.connections.add(conn.connection_id)
    for stream in session.announced_streams():
        delivered.streams.add(stream.stream_id)
    return delivered


def reaped_infos(dead: str, snapshot: Snapshot) -> tuple[list[ConnectionInfo], list[StreamInfo]]:
    """The connections of node ``dead`` in a session's snapshot, and their announced streams."""
    connections = [
        ConnectionInfo.model_validate(record["info"])
        for record in map(json.loads, snapshot.connections.values())
        if record.get("node") == dead
    ]
    ids = {c.connection_id for c in connections}
    streams = [
        info
        for info in (
            StreamInfo.model_validate(json.loads(text)["info"]) for text in snapshot.streams.values()
        )
        if info.connection_id in ids
    ]
    return connections, streams


def reap_actions(dead: str, snapshot: Snapshot) -> list[Action]:
    """What the others are told when node ``dead`` died: its connections' streams, then its
    connections, destroyed with reason ``networkDisconnected``."""
    connections = {cid for cid, text in snapshot.connections.items() if json.loads(text).get("node") == dead}
    actions: list[Action] = []
    for text in snapshot.streams.values():
        info = StreamInfo.model_validate(json.loads(text)["info"])
        if info.connection_id in connections:
            event = StreamDestroyedEvent(
                stream_id=info.stream_id,
                connection_id=info.connection_id,
                reason=StreamReason.NETWORK_DISCONNECTED,
            )
            actions.append(Deliver(event))
    for cid in sorted(connections):
        reason = DisconnectReason.NETWORK_DISCONNECTED
        actions.append(Deliver(ConnectionDestroyedEvent(connection_id=cid, reason=reason)))
    return actions
