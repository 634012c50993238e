"""The sans-I/O grace logic of :class:`Session`: suspending a connection whose link broke,
resuming it with its secret and token, holding signals for it, and the end of its grace."""

from __future__ import annotations

import pytest

from salon.errors import NotFoundError, PermissionDeniedError
from salon.protocol import DisconnectReason, PublishRequest, SignalEvent, StreamCreatedEvent, StreamInfo
from salon.redact import redact
from salon.signalling.session import (
    MAX_HELD_SIGNALS,
    Deliver,
    ResumeRefusedError,
    Session,
    new_resume_secret,
)
from salon.tokens import Role


def resumable_session() -> tuple[Session, str]:
    session = Session("1_sid", "key")
    conn, _ = session.join(
        "alice", role=Role.PUBLISHER, data="a", created_at=0, now=0.0, resumable=True, token="T1==alice"
    )
    session.join("bob", role=Role.PUBLISHER, data="b", created_at=0, now=0.0, resumable=True, token="T1==bob")
    assert conn.resume_secret is not None
    return session, conn.resume_secret


def test_secrets_are_random_long_and_redacted_in_logs() -> None:
    secrets = {new_resume_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert len(secret) >= 36
        assert secret not in redact(f"resume with {secret}!")


def test_a_connection_joined_without_grace_is_not_resumable() -> None:
    session = Session("1_sid", "key")
    conn, _ = session.join("c", role=Role.PUBLISHER, data="", created_at=0, now=0.0)
    assert conn.resume_secret is None
    assert session.suspend("c", 1.0) is False and not conn.suspended
    with pytest.raises(ResumeRefusedError):
        session.resume("c", "", "", 2.0)


def test_suspend_keeps_everything_and_tells_nobody() -> None:
    session, _ = resumable_session()
    stream, _ = session.publish("alice", PublishRequest(request_id=1), created_at=1)
    sub = session.subscribe("bob", stream.stream_id)
    assert session.suspend("alice", 5.0) is True
    assert session.suspended() == ["alice"]
    assert session.streams[stream.stream_id] is stream
    assert session.subscriptions[sub.subscription_id] is sub
    assert set(session.connections) == {"alice", "bob"}
    # A suspended connection has no link to time out; its grace period is what ends it.
    assert session.expired(100.0, 6.0) == ["bob"]
    assert session.grace_over(34.9, 30.0) == []
    assert session.grace_over(35.0, 30.0) == ["alice"]


def test_resume_needs_the_secret_and_the_same_token_and_renews_the_secret() -> None:
    session, secret = resumable_session()
    session.suspend("alice", 5.0)
    for cid, attempt, token in [
        ("alice", secret + "x", "T1==alice"),
        ("alice", secret, "T1==bob"),
        ("alice", "", "T1==alice"),
        ("nobody", secret, "T1==alice"),
    ]:
        with pytest.raises(ResumeRefusedError) as refused:
            session.resume(cid, attempt, token, 6.0)
        assert refused.value.code == "resume_refused"
    assert session.connections["alice"].suspended  # refusals changed nothing
    conn = session.resume("alice", secret, "T1==alice", 7.0)
    assert conn.connection_id == "alice" and not conn.suspended and conn.last_seen == 7.0
    assert conn.resume_secret not in (None, secret)
    with pytest.raises(ResumeRefusedError):  # the old secret is spent
        session.resume("alice", secret, "T1==alice", 8.0)


def test_signals_are_held_bounded_and_in_order_other_events_are_dropped() -> None:
    session, secret = resumable_session()
    session.suspend("alice", 1.0)
    stream = StreamInfo(
        stream_id="s",
        connection_id="bob",
        created_at=0,
        name="",
        has_audio=True,
        has_video=True,
        video_type=None,
    )
    assert session.hold("alice", StreamCreatedEvent(stream=stream)) is False
    assert session.hold("bob", SignalEvent(signal_type="", data="", from_connection_id=None)) is False
    for n in range(MAX_HELD_SIGNALS + 5):
        for action in session.signal("bob", "chat", str(n), "alice"):
            assert isinstance(action, Deliver)
            assert session.hold("alice", action.message) is True
    session.resume("alice", secret, "T1==alice", 2.0)
    held = session.take_held("alice")
    assert [s.data for s in held] == [str(n) for n in range(5, MAX_HELD_SIGNALS + 5)]  # the latest
    assert session.take_held("alice") == []


def test_leaving_while_suspended_destroys_as_usual() -> None:
    session, _ = resumable_session()
    stream, _ = session.publish("alice", PublishRequest(request_id=1), created_at=1)
    session.suspend("alice", 1.0)
    actions = session.leave("alice", DisconnectReason.NETWORK_DISCONNECTED)
    messages = [a.message for a in actions if isinstance(a, Deliver)]
    assert [(m.type, getattr(m, "reason", None)) for m in messages] == [
        ("stream_destroyed", "networkDisconnected"),
        ("connection_destroyed", "networkDisconnected"),
    ]
    assert stream.stream_id not in session.streams and session.suspended() == []


def test_republish_is_for_the_connections_own_streams() -> None:
    session, _ = resumable_session()
    stream, _ = session.publish("alice", PublishRequest(request_id=1), created_at=1)
    assert session.republish("alice", stream.stream_id) is stream
    with pytest.raises(PermissionDeniedError):
        session.republish("bob", stream.stream_id)
    with pytest.raises(NotFoundError):
        session.republish("alice", "nope")
