"""The sans-I/O signalling Session: state changes and the actions it asks for."""

from __future__ import annotations

import pytest

from salon.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, PermissionDeniedError
from salon.protocol import (
    CloseCode,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    DisconnectReason,
    MediaResetEvent,
    MuteAllChangedEvent,
    MuteForcedEvent,
    PublishRequest,
    SessionDisconnectedEvent,
    SignalEvent,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamReason,
    UpdateStreamRequest,
    VideoDisabledEvent,
    VideoEnabledEvent,
    VideoReason,
)
from salon.signalling.session import Close, Deliver, Session
from salon.tokens import Role


def make_session(*roles: Role) -> Session:
    session = Session("1_sid", "key")
    for i, role in enumerate(roles):
        session.join(f"c{i}", role=role, data=f"d{i}", created_at=i, now=0.0)
    return session


def publish(session: Session, cid: str, **kwargs: object) -> str:
    stream, _ = session.publish(cid, PublishRequest(request_id=1, **kwargs), created_at=5)  # type: ignore[arg-type]
    return stream.stream_id


def test_join_announces_the_new_connection_to_the_others_only() -> None:
    session = make_session(Role.PUBLISHER)
    conn, actions = session.join("c9", role=Role.SUBSCRIBER, data="x", created_at=1, now=0.0)
    assert conn.info().data == "x"
    assert actions == [Deliver(ConnectionCreatedEvent(connection=conn.info()), exclude="c9")]


def test_joining_twice_is_refused() -> None:
    session = make_session(Role.PUBLISHER)
    with pytest.raises(InvalidRequestError):
        session.join("c0", role=Role.PUBLISHER, data="", created_at=0, now=0.0)


def test_leave_destroys_streams_then_the_connection_and_is_idempotent() -> None:
    session = make_session(Role.PUBLISHER, Role.SUBSCRIBER)
    stream_id = publish(session, "c0")
    session.subscribe("c1", stream_id)
    actions = session.leave("c0", DisconnectReason.NETWORK_DISCONNECTED)
    assert [type(a.message) for a in actions if isinstance(a, Deliver)] == [
        StreamDestroyedEvent,
        ConnectionDestroyedEvent,
    ]
    first = actions[0]
    assert isinstance(first, Deliver) and isinstance(first.message, StreamDestroyedEvent)
    assert first.message.reason == "networkDisconnected"
    assert session.streams == {} and session.subscriptions == {}
    assert session.leave("c0", DisconnectReason.NETWORK_DISCONNECTED) == []


def test_subscriber_cannot_publish_and_nothing_changes() -> None:
    session = make_session(Role.SUBSCRIBER)
    with pytest.raises(PermissionDeniedError):
        publish(session, "c0")
    assert session.streams == {}


def test_publisheronly_cannot_subscribe() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER_ONLY)
    stream_id = publish(session, "c0")
    with pytest.raises(PermissionDeniedError):
        session.subscribe("c1", stream_id)
    assert session.subscriptions == {}


def test_a_stream_needs_audio_or_video() -> None:
    session = make_session(Role.PUBLISHER)
    with pytest.raises(InvalidRequestError):
        publish(session, "c0", has_audio=False, has_video=False)


def test_only_moderators_force_and_the_target_must_exist() -> None:
    session = make_session(Role.PUBLISHER, Role.MODERATOR)
    stream_id = publish(session, "c0")
    for call in (
        lambda: session.force_disconnect("c1", by="c0"),
        lambda: session.force_unpublish(stream_id, by="c0"),
        lambda: session.force_mute(stream_id, by="c0"),
    ):
        with pytest.raises(PermissionDeniedError):
            call()
    with pytest.raises(NotFoundError):
        session.force_disconnect("nobody", by="c1")
    assert stream_id in session.streams and len(session.connections) == 2


def test_force_disconnect_tells_the_target_then_closes_it() -> None:
    session = make_session(Role.PUBLISHER, Role.MODERATOR)
    actions = session.force_disconnect("c0", by="c1")
    assert actions[0] == Deliver(
        SessionDisconnectedEvent(reason=DisconnectReason.FORCE_DISCONNECTED), to=("c0",)
    )
    assert actions[1] == Close("c0", CloseCode.FORCE_DISCONNECTED, "force disconnected")
    assert "c0" not in session.connections


def test_update_stream_reports_only_real_changes() -> None:
    session = make_session(Role.PUBLISHER)
    stream_id = publish(session, "c0", has_audio=True)
    actions = session.update_stream(
        "c0", UpdateStreamRequest(request_id=1, stream_id=stream_id, has_audio=True, has_video=False)
    )
    assert [a.message.property for a in actions if isinstance(a, Deliver)] == ["has_video"]  # type: ignore[union-attr]


def test_mute_all_mutes_existing_and_later_streams_but_the_excluded() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER)
    s0, s1 = publish(session, "c0"), publish(session, "c1")
    actions = session.force_mute(None, excluded=[s1])
    muted = [
        a.message.stream_id
        for a in actions
        if isinstance(a, Deliver) and isinstance(a.message, MuteForcedEvent)
    ]
    assert muted == [s0]
    assert not session.streams[s0].has_audio and session.streams[s1].has_audio
    # Every connection is told mute-all is on, before the per-stream mute_forced.
    assert actions[0] == Deliver(MuteAllChangedEvent(active=True, excluded_stream_ids=[s1]))
    s2 = publish(session, "c1")
    assert not session.streams[s2].has_audio
    assert session.force_mute(None, active=False) == [
        Deliver(MuteAllChangedEvent(active=False, excluded_stream_ids=[]))
    ]
    assert session.streams[publish(session, "c1")].has_audio


def test_signal_limits_and_targets() -> None:
    session = make_session(Role.SUBSCRIBER, Role.SUBSCRIBER)
    assert session.signal("c0", "chat", "hi", None) == [
        Deliver(SignalEvent(signal_type="chat", data="hi", from_connection_id="c0"), to=None)
    ]
    assert session.signal(None, "t", "x", "c1")[0].to == ("c1",)  # type: ignore[union-attr]
    with pytest.raises(PayloadTooLargeError):
        session.signal("c0", "t" * 129, "", None)
    with pytest.raises(PayloadTooLargeError):
        session.signal("c0", "t", "d" * 8193, None)
    with pytest.raises(NotFoundError):
        session.signal("c0", "t", "", "c7")
    assert session.signal("c0", "t" * 128, "d" * 8192, None)


def test_expired_lists_connections_silent_past_the_timeout() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER)
    session.touch("c1", 9.0)
    assert session.expired(10.0, 5.0) == ["c0"]


def test_stream_created_event_goes_to_others() -> None:
    session = make_session(Role.PUBLISHER)
    stream, actions = session.publish("c0", PublishRequest(request_id=1, name="n"), created_at=1)
    assert actions == [Deliver(StreamCreatedEvent(stream=stream.info()), exclude="c0")]


def test_a_pending_stream_is_known_to_its_publisher_only_until_announced() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER)
    stream, actions = session.publish("c0", PublishRequest(request_id=1), created_at=1, announce=False)
    assert actions == [] and not stream.announced
    assert session.announced_streams() == []
    with pytest.raises(NotFoundError):
        session.announced_stream(stream.stream_id)
    with pytest.raises(NotFoundError):
        session.subscribe("c1", stream.stream_id)
    assert session.subscriptions == {}
    assert session.own_stream("c0", stream.stream_id) is stream
    with pytest.raises(PermissionDeniedError):
        session.own_stream("c1", stream.stream_id)
    # Property changes are not told to the others before the stream is announced.
    assert (
        session.update_stream("c0", UpdateStreamRequest(request_id=2, stream_id=stream.stream_id, name="x"))
        == []
    )
    assert session.announce_stream(stream.stream_id) == [
        Deliver(StreamCreatedEvent(stream=stream.info()), exclude="c0")
    ]
    assert stream.info().name == "x"
    assert session.announce_stream(stream.stream_id) == []  # idempotent
    assert session.announce_stream("nope") == []
    assert session.announced_streams() == [stream]
    assert session.subscribe("c1", stream.stream_id).stream_id == stream.stream_id


def test_a_pending_stream_ends_for_its_publisher_only() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER)
    stream, _ = session.publish("c0", PublishRequest(request_id=1), created_at=1, announce=False)
    event = StreamDestroyedEvent(
        stream_id=stream.stream_id, connection_id="c0", reason=StreamReason.MEDIA_STOPPED
    )
    assert session.end_stream(stream.stream_id, StreamReason.MEDIA_STOPPED) == [Deliver(event, to=("c0",))]
    assert session.streams == {}


def test_withdraw_forgets_a_pending_stream_silently_but_not_an_announced_one() -> None:
    session = make_session(Role.PUBLISHER)
    pending, _ = session.publish("c0", PublishRequest(request_id=1), created_at=1, announce=False)
    announced = publish(session, "c0")
    session.withdraw(pending.stream_id)
    session.withdraw(announced)
    session.withdraw("nope")
    assert list(session.streams) == [announced]


def test_mute_all_tells_the_others_about_announced_streams_only() -> None:
    session = make_session(Role.MODERATOR, Role.PUBLISHER)
    pending, _ = session.publish("c1", PublishRequest(request_id=1), created_at=1, announce=False)
    actions = session.force_mute(None, by="c0")
    assert actions == [
        Deliver(MuteAllChangedEvent(active=True, excluded_stream_ids=[])),
        Deliver(MuteForcedEvent(stream_id=pending.stream_id), to=("c1",)),
    ]
    assert not pending.has_audio


def test_own_subscription_is_the_connections_own() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER, Role.PUBLISHER)
    sub = session.subscribe("c1", publish(session, "c0"))
    assert session.own_subscription("c1", sub.subscription_id) is sub
    with pytest.raises(NotFoundError):
        session.own_subscription("c2", sub.subscription_id)


def test_media_reset_tells_every_connection_its_own_streams_then_ends_them() -> None:
    session = make_session(Role.PUBLISHER, Role.PUBLISHER, Role.SUBSCRIBER)
    announced = publish(session, "c0")
    pending, _ = session.publish("c1", PublishRequest(request_id=1), created_at=5, announce=False)
    signalling_only = publish(session, "c1")
    sub = session.subscribe("c2", announced)
    actions = session.media_reset([announced, pending.stream_id, "gone-already"])
    assert actions == [
        Deliver(MediaResetEvent(stream_ids=[announced]), to=("c0",)),
        Deliver(MediaResetEvent(stream_ids=[pending.stream_id]), to=("c1",)),
        Deliver(MediaResetEvent(stream_ids=[]), to=("c2",)),
        Deliver(
            StreamDestroyedEvent(stream_id=announced, connection_id="c0", reason=StreamReason.MEDIA_STOPPED)
        ),
        Deliver(
            StreamDestroyedEvent(
                stream_id=pending.stream_id, connection_id="c1", reason=StreamReason.MEDIA_STOPPED
            ),
            to=("c1",),
        ),
    ]
    assert list(session.streams) == [signalling_only]  # streams without media stay
    assert sub.subscription_id not in session.subscriptions


def test_media_reset_of_some_connections_tells_only_them() -> None:
    """One worker of a spread session died: its connections are told, its streams end, the
    others hear only that those streams were destroyed."""
    session = make_session(Role.PUBLISHER, Role.PUBLISHER, Role.SUBSCRIBER)
    lost = publish(session, "c0")
    kept = publish(session, "c1")
    actions = session.media_reset([lost], ["c0", "c2", "unknown"])
    assert actions == [
        Deliver(MediaResetEvent(stream_ids=[lost]), to=("c0",)),
        Deliver(MediaResetEvent(stream_ids=[]), to=("c2",)),
        Deliver(StreamDestroyedEvent(stream_id=lost, connection_id="c0", reason=StreamReason.MEDIA_STOPPED)),
    ]
    assert list(session.streams) == [kept]


# -- subscription preferences and quality events ----------------------------------------


def test_subscribe_stores_the_preferences_and_set_preferences_replaces_both() -> None:
    session = make_session(Role.PUBLISHER, Role.SUBSCRIBER)
    stream_id = publish(session, "c0")
    sub = session.subscribe("c1", stream_id, preferred_resolution=(320, 240), preferred_frame_rate=15)
    assert (sub.preferred_resolution, sub.preferred_frame_rate) == ((320, 240), 15.0)
    assert isinstance(sub.preferred_frame_rate, float)
    same = session.set_preferences(
        "c1", sub.subscription_id, preferred_resolution=(1280, 720), preferred_frame_rate=None
    )
    assert same is sub
    assert (sub.preferred_resolution, sub.preferred_frame_rate) == ((1280, 720), None)
    session.set_preferences("c1", sub.subscription_id, preferred_resolution=None, preferred_frame_rate=7.5)
    assert (sub.preferred_resolution, sub.preferred_frame_rate) == (None, 7.5)


@pytest.mark.parametrize(
    ("resolution", "frame_rate"),
    [
        ((0, 240), None),
        ((320, -1), None),
        ((320, 16385), None),
        ((320.0, 240), None),
        ((True, 240), None),
        ((320,), None),
        (None, 0),
        (None, -5.0),
        (None, 240.5),
        (None, True),
        (None, float("nan")),
        (None, "30"),
    ],
)
def test_preferences_out_of_bounds_are_refused_and_change_nothing(
    resolution: object, frame_rate: object
) -> None:
    session = make_session(Role.PUBLISHER, Role.SUBSCRIBER)
    stream_id = publish(session, "c0")
    sub = session.subscribe("c1", stream_id, preferred_resolution=(640, 480), preferred_frame_rate=30)
    with pytest.raises(InvalidRequestError) as refused:
        session.set_preferences(
            "c1",
            sub.subscription_id,
            preferred_resolution=resolution,  # type: ignore[arg-type]
            preferred_frame_rate=frame_rate,  # type: ignore[arg-type]
        )
    assert refused.value.code == "invalid_request"
    assert (sub.preferred_resolution, sub.preferred_frame_rate) == ((640, 480), 30.0)
    with pytest.raises(InvalidRequestError):
        session.subscribe(
            "c1",
            stream_id,
            preferred_resolution=resolution,  # type: ignore[arg-type]
            preferred_frame_rate=frame_rate,  # type: ignore[arg-type]
        )
    assert list(session.subscriptions) == [sub.subscription_id]


def test_only_the_subscriber_sets_its_preferences() -> None:
    session = make_session(Role.PUBLISHER, Role.SUBSCRIBER, Role.MODERATOR)
    stream_id = publish(session, "c0")
    sub = session.subscribe("c1", stream_id, preferred_frame_rate=30)
    for cid, sub_id in (("c2", sub.subscription_id), ("c0", sub.subscription_id), ("c1", "nope")):
        with pytest.raises(NotFoundError):
            session.set_preferences(cid, sub_id, preferred_resolution=(1, 1), preferred_frame_rate=1)
    assert (sub.preferred_resolution, sub.preferred_frame_rate) == (None, 30.0)


def test_quality_changes_go_to_the_subscriber_once_per_change() -> None:
    session = make_session(Role.PUBLISHER, Role.SUBSCRIBER)
    stream_id = publish(session, "c0")
    sub = session.subscribe("c1", stream_id)
    sid = sub.subscription_id
    disabled = VideoDisabledEvent(subscription_id=sid, stream_id=stream_id, reason=VideoReason.QUALITY)
    enabled = VideoEnabledEvent(subscription_id=sid, stream_id=stream_id, reason=VideoReason.QUALITY)
    assert session.video_quality_changed(sid, False) == []  # it was on already
    assert session.video_quality_changed(sid, True) == [Deliver(disabled, to=("c1",))]
    assert sub.video_disabled_for_quality
    assert session.video_quality_changed(sid, True) == []
    assert session.video_quality_changed(sid, False) == [Deliver(enabled, to=("c1",))]
    assert not sub.video_disabled_for_quality
    session.unsubscribe("c1", sid)
    assert session.video_quality_changed(sid, True) == []  # an ended subscription: nobody to tell
