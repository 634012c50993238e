"""The cluster's sans-I/O core: batches, mirrors, delivery dedupe, reaping (salon.cluster.core)."""

from __future__ import annotations

import json
import subprocess
import sys

from salon.cluster.core import (
    Delivered,
    NodeRecord,
    Snapshot,
    apply_to_mirror,
    decode_batch,
    encode_batch,
    load_snapshot,
    reap_actions,
    split_local,
)
from salon.protocol import (
    CloseCode,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    PublishRequest,
    SignalEvent,
    StreamCreatedEvent,
    StreamDestroyedEvent,
)
from salon.signalling.session import Close, Deliver, Session
from salon.tokens import Role


def joined(session: Session, cid: str) -> list[Deliver | Close]:
    _conn, actions = session.join(cid, role=Role.MODERATOR, data=f"d-{cid}", created_at=1, now=0.0)
    return actions


def test_a_batch_round_trips_with_its_presence() -> None:
    origin = Session("s", "k")
    actions = joined(origin, "c1")
    stream, published = origin.publish(
        "c1", PublishRequest(request_id=1, name="cam", has_audio=True), created_at=2
    )
    origin.set_layout_class_lists({stream.stream_id: ["focus"]})
    fields, presence = encode_batch("n1", origin, actions + published)
    assert set(presence.connections) == {"c1"} and json.loads(presence.connections["c1"])["node"] == "n1"
    assert json.loads(presence.streams[stream.stream_id])["layout"] == ["focus"]

    batch = decode_batch(fields)
    assert batch.origin == "n1"
    assert [type(a.message) for a, _ in batch.actions if isinstance(a, Deliver)] == [
        ConnectionCreatedEvent,
        StreamCreatedEvent,
    ]
    mirror = Session("s", "k")
    assert apply_to_mirror(mirror, batch, "n2") == []
    assert mirror.connections["c1"].node == "n1" and mirror.connections["c1"].data == "d-c1"
    assert mirror.streams[stream.stream_id].layout_class_list == ["focus"]
    assert mirror.local_empty, "another node's connection is not this node's"
    # The origin's own copy is already up to date: applying again changes nothing.
    apply_to_mirror(origin, batch, "n1")
    assert origin.connections["c1"].node is None and list(origin.streams) == [stream.stream_id]


def test_a_destroyed_local_connection_is_reported_for_clean_up() -> None:
    here = Session("s", "k")
    joined(here, "mine")
    remote = Session("s", "k")
    joined(remote, "mine")
    fields, presence = encode_batch("n2", remote, remote.force_disconnect("mine"))
    assert presence.gone_connections == ["mine"]
    gone = apply_to_mirror(here, decode_batch(fields), "n1")
    assert gone == ["mine"] and "mine" not in here.connections


def test_split_local_keeps_a_closing_local_connection_s_last_messages_here() -> None:
    session = Session("s", "k")
    joined(session, "local")
    joined(session, "remote")
    now, bus = split_local(session.force_disconnect("local"), {"local"}.__contains__)
    assert [type(a) for a in now] == [Deliver, Close] and now[0].to == ("local",)  # type: ignore[union-attr]
    assert all(isinstance(a, Deliver) and a.to is None for a in bus) and bus, (
        "connection_destroyed on the bus"
    )
    now, bus = split_local(session.force_disconnect("remote"), {"local"}.__contains__)
    assert now == [] and any(isinstance(a, Close) and a.code == CloseCode.FORCE_DISCONNECTED for a in bus)


def test_delivered_admits_each_broadcast_lifecycle_event_once() -> None:
    view = Delivered()
    created = Deliver(
        ConnectionCreatedEvent.model_validate(
            {"connection": {"connection_id": "c", "created_at": 1, "data": ""}}
        )
    )
    destroyed = Deliver(ConnectionDestroyedEvent(connection_id="c", reason="networkDisconnected"))
    signal = Deliver(SignalEvent(signal_type="t", data="", from_connection_id=None))
    assert [view.admit(a) for a in (created, created, signal, signal, destroyed, destroyed)] == [
        True,
        False,
        True,
        True,
        True,
        False,
    ]


def test_a_dead_node_s_streams_then_connections_are_reaped() -> None:
    origin = Session("s", "k")
    actions = joined(origin, "c1") + joined(origin, "c2")
    stream, published = origin.publish(
        "c1", PublishRequest(request_id=1, name="x", has_video=True), created_at=2
    )
    _fields, presence = encode_batch("dead", origin, actions + published)
    presence.connections["c2"] = presence.connections["c2"].replace('"dead"', '"alive"')
    snapshot = Snapshot(presence.connections, presence.streams, "1-0")
    reaped = reap_actions("dead", snapshot)
    messages = [a.message for a in reaped if isinstance(a, Deliver)]
    assert messages == [
        StreamDestroyedEvent(stream_id=stream.stream_id, connection_id="c1", reason="networkDisconnected"),
        ConnectionDestroyedEvent(connection_id="c1", reason="networkDisconnected"),
    ]
    assert reap_actions("nobody", snapshot) == []

    mirror = Session("s", "k")
    view = load_snapshot(mirror, snapshot, "alive")
    assert set(mirror.connections) == {"c1"}, "this node's own (stale) entries are not mirrored"
    assert view.connections == {"c1", "c2"} and view.streams == {stream.stream_id}


def test_a_node_record_round_trips() -> None:
    record = NodeRecord("n1", "10.0.0.1", 7, True, "abc")
    assert NodeRecord.loads(record.dumps()) == record


def test_the_embedded_server_never_imports_redis() -> None:
    code = (
        "import sys, salon.cli.main, salon.server.app, salon.server.run, salon.signalling.service\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m.split('.')[0] == 'redis' or m.startswith('salon.cluster'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_stream_entry_ids_sort_by_time_then_sequence() -> None:
    from salon.cluster.node import entry_order

    ids = ["10-2", "9-30", "10-10", "0-0", "10-0"]
    assert sorted(ids, key=entry_order) == ["0-0", "9-30", "10-0", "10-2", "10-10"]
