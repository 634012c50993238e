"""The Python SDK's video jitter buffer gives a hole up after MAX_HOLE_WAIT (aiortc's own waits
until the hole is 512 packets behind: 10-20 s of a low simulcast layer)."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from salon.client._media import MAX_HOLE_WAIT, _HoleBoundedJitterBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def packet(seq: int, timestamp: int, end: bool = False) -> RtpPacket:
    """A packet of the frame at ``timestamp``; ``end``: its last (the RTP marker bit)."""
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=timestamp, marker=int(end))
    p._data = bytes([seq & 0xFF])  # type: ignore[attr-defined]  # what the depayloader sets
    return p


def frames_of(buffer: _HoleBoundedJitterBuffer, packets: list[RtpPacket]) -> list[tuple[bool, int | None]]:
    out = []
    for p in packets:
        pli, frame = buffer.add(p)
        out.append((pli, None if frame is None else frame.timestamp))
    return out


def test_a_hole_repaired_within_the_wait_is_waited_for() -> None:
    clock = Clock()
    buffer = _HoleBoundedJitterBuffer(512, clock)
    # Packet 3 (first of the frame at 3000) is late; the frame at 0 cannot close without it.
    assert frames_of(buffer, [packet(1, 0), packet(2, 0), packet(4, 3000)]) == [(False, None)] * 3
    clock.now += MAX_HOLE_WAIT * 0.9
    assert frames_of(buffer, [packet(5, 6000)]) == [(False, None)]
    # Its retransmission comes within the wait: every frame comes out, nothing is skipped.
    assert frames_of(buffer, [packet(3, 3000)]) == [(False, 0)]
    assert frames_of(buffer, [packet(6, 9000)]) == [(False, 3000)]
    assert buffer.holes_skipped == 0


def test_a_hole_never_repaired_is_given_up_with_its_frame_and_a_key_frame_asked() -> None:
    clock = Clock()
    buffer = _HoleBoundedJitterBuffer(512, clock)
    assert frames_of(buffer, [packet(1, 0), packet(2, 0, True), packet(3, 3000)])[-1] == (False, 0)
    # 4 (of the frame at 3000, like 3 and 5) is lost for good; then frames at 6000 and 9000.
    assert (
        frames_of(buffer, [packet(5, 3000, True), packet(6, 6000), packet(7, 6000, True)])
        == [(False, None)] * 3
    )
    clock.now += MAX_HOLE_WAIT * 0.9
    assert frames_of(buffer, [packet(8, 9000)]) == [(False, None)]
    clock.now += MAX_HOLE_WAIT * 0.2
    # Past the wait the next packet gives the hole up: the frame at 3000 is dropped
    # (incomplete), the one at 6000 (after a packet that ends a frame) comes out, and a key
    # frame is asked for (PLI).
    assert frames_of(buffer, [packet(9, 9000, True)]) == [(True, 6000)]
    assert buffer.holes_skipped == 1
    # Then on as usual.
    assert frames_of(buffer, [packet(10, 12000)]) == [(False, 9000)]


def test_a_hole_with_no_complete_frame_after_it_is_dropped_whole() -> None:
    clock = Clock()
    buffer = _HoleBoundedJitterBuffer(512, clock)
    assert frames_of(buffer, [packet(1, 0, True), packet(2, 3000)]) == [(False, None), (False, 0)]
    assert frames_of(buffer, [packet(4, 3000)]) == [(False, None)]  # 3 is lost
    clock.now += MAX_HOLE_WAIT + 0.01
    assert frames_of(buffer, [packet(5, 3000, True)]) == [(True, None)]
    assert buffer.holes_skipped == 1
    # The frame after the drop comes out whole.
    assert frames_of(buffer, [packet(6, 6000, True), packet(7, 9000)]) == [(False, None), (False, 6000)]


def test_after_a_hole_only_a_packet_known_to_start_a_frame_starts_one() -> None:
    clock = Clock()
    buffer = _HoleBoundedJitterBuffer(512, clock)
    frames_of(buffer, [packet(1, 0, True), packet(2, 3000)])
    # Two holes: 3 (in the frame at 3000) and 6 (the first packet of the frame at 6000, whose
    # predecessor 5 is lost too): the frame at 6000 would start at 7 without its first packet.
    frames_of(buffer, [packet(4, 3000, True), packet(7, 6000, True), packet(8, 9000), packet(9, 9000, True)])
    clock.now += MAX_HOLE_WAIT + 0.01
    # Given up, the frame that comes out is the one at 9000 (after 7, which ends a frame).
    assert frames_of(buffer, [packet(10, 12000, True)]) == [(True, 9000)]


def test_frames_without_holes_never_wait() -> None:
    clock = Clock()
    buffer = _HoleBoundedJitterBuffer(512, clock)
    out = []
    for seq in range(1, 200):
        clock.now += 1.0  # slow, but nothing missing: no hole to give up
        out.append(buffer.add(packet(seq, (seq // 3) * 3000)))
    assert not any(pli for pli, _ in out) and buffer.holes_skipped == 0
    assert [f.timestamp for _, f in out if f is not None] == [i * 3000 for i in range(66)]
