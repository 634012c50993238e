"""The SDK's session features against the real server: events on connect, signals, stream
property changes, moderator actions and typed errors."""

from __future__ import annotations

import asyncio

import pytest
from sdk_helpers import EventLog, session_for, wait_for

from salon.client import (
    Connected,
    ConnectionCreated,
    ConnectionDropped,
    Disconnected,
    InvalidRequest,
    InvalidStateError,
    InvalidToken,
    MuteForced,
    NotFound,
    PermissionDenied,
    Publisher,
    Session,
    SessionEndReason,
    SessionState,
    SignalReceived,
    StreamDropped,
    StreamPropertyChanged,
    StreamReason,
    StreamReceived,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(60)


async def test_existing_streams_signals_properties_and_moderation(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    alice = session_for(server, sid)
    alice_log = EventLog(alice)
    await alice.connect()
    publisher = Publisher("alice-cam")
    stream = await alice.publish(publisher)
    await wait_for(lambda: server.sdk.list_streams(sid).count == 1, "the stream's media to flow")

    moderator = session_for(server, sid, role="moderator")
    mod_log = EventLog(moderator)
    events = moderator.events()
    await moderator.connect()
    try:
        # On connect: Connected, the connection already there, then its stream.
        first = [type(e) for e in mod_log.events[:3]]
        assert first == [Connected, ConnectionCreated, StreamReceived], mod_log.events
        received = mod_log.of(StreamReceived)[0]
        assert isinstance(received, StreamReceived) and received.stream.stream_id == stream.stream_id
        assert received.stream.name == "alice-cam" and received.stream.has_video
        assert moderator.role == "moderator" and alice.role == "publisher"
        assert isinstance(await anext(events), Connected)

        # Signals: to everyone (the sender too), and to one connection.
        await moderator.signal("chat", "hello all")
        assert alice.connection is not None
        await alice.signal("dm", "just you", to=moderator.connection)
        await wait_for(lambda: len(mod_log.of(SignalReceived)) == 2, "two signals at the moderator")
        await wait_for(lambda: len(alice_log.of(SignalReceived)) == 1, "the broadcast at alice")
        signal = alice_log.of(SignalReceived)[0]
        assert isinstance(signal, SignalReceived)
        assert (signal.type, signal.data, signal.from_connection_id) == (
            "chat",
            "hello all",
            moderator.connection_id,
        )
        with pytest.raises(NotFound, match="signal 'x' to nobody: not_found"):
            await alice.signal("x", "y", to="nobody")
        with pytest.raises(InvalidRequest, match="signal_too_large"):
            await alice.signal("big", "x" * 9000)

        # publish_video(False) is a property change for the others.
        await publisher.publish_video(False)
        await wait_for(lambda: mod_log.of(StreamPropertyChanged), "has_video to change")
        change = mod_log.of(StreamPropertyChanged)[0]
        assert isinstance(change, StreamPropertyChanged)
        assert (change.property, change.old_value, change.new_value) == ("has_video", True, False)
        assert not change.stream.has_video and not moderator.streams[stream.stream_id].has_video

        # A publisher cannot moderate; the error says what was refused.
        with pytest.raises(PermissionDenied, match=f"force_unpublish {stream.stream_id}: permission_denied"):
            await alice.force_unpublish(stream)

        # Force mute: the publisher hears about it and stops its audio.
        await moderator.force_mute(stream)
        await wait_for(lambda: alice_log.of(MuteForced), "mute_forced at alice")
        assert not publisher.publishing_audio
        await wait_for(lambda: len(mod_log.of(StreamPropertyChanged)) == 2, "has_audio to change")
        assert not moderator.streams[stream.stream_id].has_audio

        # Force unpublish: the publisher's stream is dropped on both sides.
        await moderator.force_unpublish(stream)
        await wait_for(lambda: alice_log.of(StreamDropped) and mod_log.of(StreamDropped), "stream_destroyed")
        dropped = alice_log.of(StreamDropped)[0]
        assert isinstance(dropped, StreamDropped)
        assert dropped.reason == StreamReason.FORCE_UNPUBLISHED and dropped.publisher is publisher
        assert alice.publishers == [] and publisher.stream is None and moderator.streams == {}

        # Force disconnect: final for alice, seen as a dropped connection by the moderator.
        await moderator.force_disconnect(alice.connection)
        assert await alice.wait_disconnected() == SessionEndReason.FORCE_DISCONNECTED
        assert alice.state is SessionState.DISCONNECTED
        ends = alice_log.of(Disconnected)
        assert len(ends) == 1 and isinstance(ends[0], Disconnected)
        assert ends[0].reason == SessionEndReason.FORCE_DISCONNECTED
        await wait_for(lambda: mod_log.of(ConnectionDropped), "connection_destroyed at the moderator")
        with pytest.raises(InvalidStateError, match="disconnected"):
            await alice.publish(Publisher())
    finally:
        await alice.disconnect()
        await moderator.disconnect()
    # The iterator ends after Disconnected.
    rest = [event async for event in events]
    assert isinstance(rest[-1], Disconnected) and rest[-1].reason == SessionEndReason.CLIENT_DISCONNECTED


async def test_refusals_are_typed_errors(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    with pytest.raises(InvalidToken, match="refused the token"):
        await Session(sid, "T1==not-a-token", server.url).connect()
    async with session_for(server, sid, role="subscriber") as viewer:
        with pytest.raises(PermissionDenied, match="publish Publisher"):
            await viewer.publish(Publisher("nope", video=False))
        assert viewer.publishers == []
    with pytest.raises(InvalidStateError, match="connects once"):
        await viewer.connect()


async def test_handlers_and_iterators_set_up_after_connect_see_the_streams_already_there(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    async with session_for(server, sid) as alice:
        stream = await alice.publish(Publisher("alice", video=False))
        await wait_for(lambda: server.sdk.list_streams(sid).count == 1, "the stream's media to flow")
        async with session_for(server, sid) as bob:
            # The natural code: connect, then register. Nothing was missed.
            received: list[StreamReceived] = []
            bob.on(StreamReceived, received.append)
            assert [e.stream.stream_id for e in received] == [stream.stream_id]
            everything = EventLog(bob)  # an Event handler gets the connections too
            assert [type(e) for e in everything.events] == [ConnectionCreated, StreamReceived]
            events = bob.events()
            assert [type(await anext(events)) for _ in range(2)] == [ConnectionCreated, StreamReceived]

            # Later streams arrive once each, to the handler and the iterator alike.
            carol = session_for(server, sid)
            await carol.connect()
            second = await carol.publish(Publisher("carol", video=False))
            await wait_for(lambda: len(received) == 2, "carol's stream at bob")
            assert [e.stream.stream_id for e in received] == [stream.stream_id, second.stream_id]
            async with asyncio.timeout(10):
                while not isinstance(event := await anext(events), StreamReceived):
                    pass
            assert event.stream.stream_id == second.stream_id
            # Signals: `to` is positional-or-keyword, as in OpenTok's signal(type, data, to).
            carol_log = EventLog(carol)
            await bob.signal("dm", "to carol", carol.connection)
            await wait_for(lambda: carol_log.of(SignalReceived), "the signal at carol")
            signal = carol_log.of(SignalReceived)[0]
            assert isinstance(signal, SignalReceived) and (signal.type, signal.data) == ("dm", "to carol")
            await carol.disconnect()
        assert len(received) == 2
