"""The worker channel: sans-I/O framing and typed messages (salon.media.channel)."""

from __future__ import annotations

import json

import pytest

from salon.errors import NotFoundError, ServerError
from salon.media.channel import (
    ChannelError,
    ErrorResponse,
    FrameDecoder,
    FrameTooLargeError,
    PublishRequest,
    PublishResult,
    ResultResponse,
    TransportClosedEvent,
    decode_main_message,
    decode_worker_message,
    encode_frame,
    encode_message,
    error_from_response,
    error_response,
)
from salon.media.errors import InvalidSdpError, MediaResourceError, UnsupportedError
from salon.media.workers import WorkerDiedError


def test_a_frame_is_a_big_endian_length_then_the_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_partial_frames_are_held_back_until_complete() -> None:
    data = encode_frame(b"hello world")
    decoder = FrameDecoder()
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [b"hello world"]
    assert decoder.buffered == 0


def test_several_frames_in_one_read_come_out_in_order() -> None:
    data = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three") + encode_frame(b"four")[:5]
    decoder = FrameDecoder()
    assert decoder.feed(data) == [b"one", b"", b"three"]
    assert decoder.feed(b"our") == [b"four"]


def test_an_oversize_frame_is_an_error_and_the_decoder_stays_broken() -> None:
    decoder = FrameDecoder(max_size=10)
    assert decoder.feed(encode_frame(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FrameTooLargeError):
        decoder.feed((11).to_bytes(4, "big") + b"x")
    with pytest.raises(ChannelError):
        decoder.feed(encode_frame(b"ok"))
    with pytest.raises(FrameTooLargeError):
        encode_frame(b"x" * 11, max_size=10)


def test_requests_round_trip_through_their_union() -> None:
    request = PublishRequest(id=7, router_id="ro-1", stream_id="s-1", offer="v=0\r\n")
    (frame,) = FrameDecoder().feed(encode_message(request))
    assert json.loads(frame)["type"] == "publish"
    assert decode_main_message(frame) == request


def test_worker_messages_round_trip_through_their_union() -> None:
    result = ResultResponse(id=3, result=PublishResult(transport_id="tr-1", answer="v=0", producers=[]))
    event = TransportClosedEvent(router_id="ro-1", transport_id="tr-1", reason="ice_failed", by_peer=True)
    frames = FrameDecoder().feed(encode_message(result) + encode_message(event))
    assert [decode_worker_message(f) for f in frames] == [result, event]


def test_malformed_messages_are_channel_errors() -> None:
    with pytest.raises(ChannelError):
        decode_main_message(b'{"type": "explode", "id": 1}')
    with pytest.raises(ChannelError):
        decode_worker_message(b"not json")
    with pytest.raises(ChannelError):
        decode_main_message(b'{"type": "publish", "id": 1, "router_id": "r"}')


@pytest.mark.parametrize(
    "error",
    [
        InvalidSdpError("no fingerprint"),
        UnsupportedError("no common codec"),
        NotFoundError("no stream s-1"),
        MediaResourceError("no UDP port left"),
    ],
)
def test_errors_are_re_raised_as_the_same_class_with_code_and_message(error: Exception) -> None:
    assert isinstance(error, InvalidSdpError | UnsupportedError | NotFoundError | MediaResourceError)
    response = error_response(5, error)
    (frame,) = FrameDecoder().feed(encode_message(response))
    rebuilt = error_from_response(ErrorResponse.model_validate_json(frame))
    assert type(rebuilt) is type(error)
    assert (rebuilt.code, rebuilt.message) == (error.code, error.message)


def test_an_error_class_unknown_by_name_travels_as_its_nearest_known_base() -> None:
    response = error_response(1, WorkerDiedError("gone"))
    assert response.error == "MediaResourceError" and response.code == "media_worker_died"
    unknown = ErrorResponse(id=1, error="SomethingNew", code="weird", message="m")
    rebuilt = error_from_response(unknown)
    assert type(rebuilt) is ServerError and rebuilt.code == "weird"
