"""The worker-side recorder: a producer's plain RTP to an archiver's loopback socket, and the
archiver's feedback (NACK answered from the producer's cache or upstream, key-frame requests)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from media_fakes import DELTA, KEY, OPUS, feed, make_producer

from salon.media.errors import MediaStateError
from salon.media.recording import TOKEN_SIZE, TRACK_AUDIO, TRACK_VIDEO, Recorder
from salon.media.rtcp import Nack, Pli

TOKEN = bytes(range(TOKEN_SIZE))


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    """The archiver's end: a UDP socket on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def receive(sock: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    """The next ``count`` datagrams (the event loop runs meanwhile: the recorder reads its
    feedback there)."""
    loop = asyncio.get_running_loop()
    return [await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), 5) for _ in range(count)]


async def test_packets_reach_the_sink_with_token_and_track(sink: socket.socket) -> None:
    video, pub = make_producer()
    audio, _ = make_producer(OPUS, ssrc=3333, rtx_ssrc=None)
    recorder = Recorder([video, audio], sink.getsockname(), TOKEN)
    try:
        assert pub.sent_rtcp(Pli), "the recorder asks for a key frame when it starts"
        feed(video, 10, 900, KEY)
        feed(audio, 20, 960, b"\xfc\x01", pt=111, ssrc=3333)
        (video_dgram, _), (audio_dgram, _) = await receive(sink, 2)
        assert video_dgram[:TOKEN_SIZE] == TOKEN and video_dgram[TOKEN_SIZE] == TRACK_VIDEO
        assert struct.unpack_from("!H", video_dgram, TOKEN_SIZE + 1 + 2)[0] == 10
        assert video_dgram.endswith(KEY)
        assert audio_dgram[TOKEN_SIZE] == TRACK_AUDIO and audio_dgram.endswith(b"\xfc\x01")
        assert recorder.stats.packets_sent == 2 and recorder.stats.dropped == 0
        # Recorders are not forwarding consumers: no part in bandwidth allocation.
        assert video.consumers == [] and video.recorders == [recorder]
    finally:
        recorder.close()
    assert video.recorders == [] and audio.recorders == []


async def test_nack_is_answered_from_the_cache_and_upstream(sink: socket.socket) -> None:
    video, pub = make_producer()
    recorder = Recorder([video], sink.getsockname(), TOKEN)
    try:
        for seq in range(100, 105):
            feed(video, seq, seq * 3000, KEY if seq == 100 else DELTA)
        _, addr = (await receive(sink, 5))[-1]
        before = len(pub.sent_rtcp(Nack))
        # Packet 102 is cached, 7 never came: 102 is resent, 7 is NACKed to the publisher.
        sink.sendto(TOKEN + b"N" + bytes([TRACK_VIDEO]) + struct.pack("!HH", 102, 7), addr)
        (again, _) = (await receive(sink, 1))[0]
        assert struct.unpack_from("!H", again, TOKEN_SIZE + 1 + 2)[0] == 102
        await _until(lambda: recorder.stats.cache_misses == 1)
        assert recorder.stats.nacks_received == 1 and recorder.stats.retransmitted == 1
        nacks = pub.sent_rtcp(Nack)[before:]
        assert [n.seqs for n in nacks] == [(7,)]
    finally:
        recorder.close()


async def test_key_frame_request_and_bad_feedback(sink: socket.socket) -> None:
    video, pub = make_producer()
    recorder = Recorder([video], sink.getsockname(), TOKEN)
    try:
        plis = len(pub.sent_rtcp(Pli))
        recorder.handle_feedback(TOKEN + b"K", time.monotonic() + 10)  # past the throttle
        assert len(pub.sent_rtcp(Pli)) == plis + 1 and recorder.stats.key_frame_requests == 1
        for bad in [
            b"",
            TOKEN,
            bytes(TOKEN_SIZE) + b"K",  # another token
            TOKEN + b"N" + bytes([TRACK_VIDEO]) + b"\x01",  # odd length
            TOKEN + b"X",
        ]:
            recorder.handle_feedback(bad, time.monotonic() + 20)
        assert recorder.stats.bad_feedback == 5
        assert len(pub.sent_rtcp(Pli)) == plis + 1
    finally:
        recorder.close()


async def test_sending_never_blocks_and_drops_are_counted(sink: socket.socket) -> None:
    """An archiver that reads nothing, then one that is gone: sends return at once."""
    video, _ = make_producer()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    recorder = Recorder([video], sink.getsockname(), TOKEN)
    payload = DELTA + bytes(1100)
    started = time.monotonic()
    for seq in range(3000):
        feed(video, seq & 0xFFFF, seq * 3000, payload)
    assert time.monotonic() - started < 5
    assert recorder.stats.packets_sent + recorder.stats.dropped == 3000
    sink.close()  # the archiver died: sends are refused (ECONNREFUSED) and counted as drops
    for seq in range(3000, 3010):
        feed(video, seq, seq * 3000, payload)
        await asyncio.sleep(0)
    assert recorder.stats.dropped >= 1
    recorder.close()


async def test_recorder_closes_with_its_producers(sink: socket.socket) -> None:
    video, _ = make_producer()
    audio, _ = make_producer(OPUS, ssrc=3333, rtx_ssrc=None)
    recorder = Recorder([video, audio], sink.getsockname(), TOKEN)
    video.close()
    assert not recorder.closed and list(recorder.producers) == ["audio"]
    audio.close()
    assert recorder.closed


async def test_sink_must_be_loopback_and_token_sized() -> None:
    video, _ = make_producer()
    with pytest.raises(MediaStateError, match="loopback"):
        Recorder([video], ("192.0.2.1", 9), TOKEN)
    with pytest.raises(MediaStateError, match="16 bytes"):
        Recorder([video], ("127.0.0.1", 9), b"short")


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
