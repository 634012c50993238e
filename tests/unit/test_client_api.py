"""The client SDK's public API is what ``salon.client.__all__`` says: pin it."""

from __future__ import annotations

import dataclasses

import pytest
from aiortc.rtp import RtpPacket

import salon.client
from salon.client import errors, events
from salon.client._link import signalling_url
from salon.client._media import complete_rejected_mlines, new_peer_connection, route_rtp_by_mid
from salon.protocol import ErrorCode

EXPECTED = [
    "ActiveSpeakerChanged",
    "ArchiveStarted",
    "ArchiveStopped",
    "AudioFrame",
    "AudioLevels",
    "AudioSource",
    "CameraSource",
    "ClientError",
    "Conflict",
    "Connected",
    "Connection",
    "ConnectionCreated",
    "ConnectionDropped",
    "ConnectionFailed",
    "ConnectionLost",
    "CustomAudioSource",
    "CustomVideoSource",
    "DeviceNotFound",
    "DisconnectReason",
    "Disconnected",
    "Error",
    "Event",
    "InvalidRequest",
    "InvalidStateError",
    "InvalidToken",
    "MediaError",
    "MediaFileAudioSource",
    "MediaFileVideoSource",
    "MediaRejected",
    "MediaUnavailable",
    "MuteAllChanged",
    "MuteForced",
    "NotFound",
    "PermissionDenied",
    "Publisher",
    "PublisherStats",
    "RateLimited",
    "Reconnected",
    "Reconnecting",
    "RequestRefused",
    "RtpStats",
    "ServerError",
    "Session",
    "SessionEndReason",
    "SessionNotFound",
    "SessionState",
    "SignalReceived",
    "SourceError",
    "Stream",
    "StreamDropped",
    "StreamPropertyChanged",
    "StreamPublished",
    "StreamReason",
    "StreamReceived",
    "Subscriber",
    "SubscriberStats",
    "TestPatternSource",
    "ToneSource",
    "VideoDisabled",
    "VideoEnabled",
    "VideoFrame",
    "VideoReason",
    "VideoSource",
    "VideoType",
    "read_test_pattern_index",
]


def test_client_exports_are_pinned() -> None:
    assert sorted(salon.client.__all__) == sorted(EXPECTED)
    for name in salon.client.__all__:
        assert hasattr(salon.client, name), name


def test_every_event_is_a_frozen_dataclass_exported() -> None:
    for name in events.__all__:
        cls = getattr(events, name)
        if isinstance(cls, type) and issubclass(cls, events.Event):
            assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
            assert name in salon.client.__all__, name


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.PERMISSION_DENIED, errors.PermissionDenied),
        (ErrorCode.NOT_FOUND, errors.NotFound),
        (ErrorCode.SIGNAL_TOO_LARGE, errors.InvalidRequest),
        (ErrorCode.MEDIA_UNAVAILABLE, errors.MediaUnavailable),
        (ErrorCode.INVALID_SDP, errors.MediaRejected),
        (ErrorCode.INTERNAL_ERROR, errors.ServerError),
        (ErrorCode.RATE_LIMITED, errors.RateLimited),
    ],
)
def test_server_error_codes_map_to_typed_errors_that_say_what_was_refused(
    code: ErrorCode, cls: type[errors.RequestRefused]
) -> None:
    error = errors.error_for_code("subscribe to stream s1", code, "because")
    assert type(error) is cls and isinstance(error, errors.ClientError)
    assert str(error) == f"subscribe to stream s1: {code.value}: because"
    assert error.code is code and error.server_message == "because"


def test_every_server_error_code_has_a_typed_error() -> None:
    for code in ErrorCode:
        if code is not ErrorCode.INVALID_TOKEN:  # a connect failure: InvalidToken
            assert type(errors.error_for_code("x", code, "y")) is not errors.RequestRefused, code


def test_signalling_url_accepts_http_and_ws() -> None:
    assert signalling_url("http://h:1") == "ws://h:1/signalling"
    assert signalling_url("https://h/") == "wss://h/signalling"
    assert signalling_url("ws://h:1/signalling") == "ws://h:1/signalling"
    with pytest.raises(ValueError, match="http"):
        signalling_url("h:1")


def test_rejected_mlines_get_the_dtls_attributes_of_an_accepted_one() -> None:
    answer = (
        "v=0\r\ns=-\r\n"
        "m=audio 5000 UDP/TLS/RTP/SAVPF 111\r\na=setup:active\r\na=fingerprint:sha-256 AB\r\na=rtcp-mux\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\n"
    )
    patched = complete_rejected_mlines(answer)
    video = patched.split("m=video")[1]
    assert "a=setup:active" in video and "a=fingerprint:sha-256 AB" in video and "a=rtcp-mux" in video
    assert complete_rejected_mlines(patched) == patched


async def test_rtp_of_a_new_ssrc_goes_to_the_receiver_of_its_mid_never_another() -> None:
    """A new subscription's first packets can come before its receiver is set up: dropped,
    not taken by the receiver of an earlier stream with the same payload type."""
    pc = new_peer_connection([])
    try:
        pc.addTransceiver("audio", direction="recvonly")
        route_rtp_by_mid(pc)
        router = pc.getTransceivers()[0].receiver.transport._rtp_router
        route_rtp_by_mid(pc)  # twice: still one wrapper
        earlier, later = object(), object()
        router.register_receiver(earlier, ssrcs=[1111], payload_types=[96], mid="0")
        packet = RtpPacket(payload_type=96, ssrc=2222)
        packet.extensions.mid = "1"
        assert router.route_rtp(packet) is None  # mid 1 has no receiver yet
        assert 2222 not in router.ssrc_table
        router.register_receiver(later, ssrcs=[], payload_types=[96], mid="1")
        assert router.route_rtp(packet) is later and router.ssrc_table[2222] is later
        wrong_type = RtpPacket(payload_type=111, ssrc=3333)
        wrong_type.extensions.mid = "1"
        assert router.route_rtp(wrong_type) is None
        # Known SSRCs, and packets without a MID, are routed as aiortc does.
        assert router.route_rtp(RtpPacket(payload_type=96, ssrc=1111)) is earlier
        assert router.route_rtp(RtpPacket(payload_type=96, ssrc=4444)) is None  # two receivers of 96
    finally:
        await pc.close()


def test_audio_levels_and_active_speaker_messages_become_typed_events() -> None:
    from salon.client import ActiveSpeakerChanged, AudioLevels, Event, Session
    from salon.protocol import ActiveSpeakerEvent, AudioLevelEvent, StreamAudioLevel

    session = Session("1_session", "token", "http://127.0.0.1:1")
    seen: list[Event] = []
    session.on(Event, seen.append)
    session._on_message(AudioLevelEvent(levels=[StreamAudioLevel(stream_id="s1", level=0.25)]))
    session._on_message(ActiveSpeakerEvent(stream_id="s1"))
    session._on_message(ActiveSpeakerEvent(stream_id=None))
    assert seen == [AudioLevels({"s1": 0.25}), ActiveSpeakerChanged("s1"), ActiveSpeakerChanged(None)]


def test_archive_messages_become_typed_events() -> None:
    from salon.client import ArchiveStarted, ArchiveStopped, Event, Session
    from salon.protocol import ArchiveStartedEvent, ArchiveStoppedEvent, server_message_adapter

    session = Session("1_session", "token", "http://127.0.0.1:1")
    seen: list[Event] = []
    session.on(Event, seen.append)
    session._on_message(server_message_adapter.validate_json('{"type":"archive_started","archive_id":"a1"}'))
    session._on_message(ArchiveStartedEvent(archive_id="a2", name="lesson"))
    session._on_message(ArchiveStoppedEvent(archive_id="a2", name="lesson"))
    assert seen == [
        ArchiveStarted("a1", None),
        ArchiveStarted("a2", "lesson"),
        ArchiveStopped("a2", "lesson"),
    ]
