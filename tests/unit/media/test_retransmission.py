from __future__ import annotations

import pytest

from salon.media.retransmission import RetransmissionBuffer


def packet(seq: int) -> bytes:
    return b"\x80\x60" + seq.to_bytes(2, "big") + bytes(8) + b"payload"


def test_a_stored_packet_is_returned_by_its_sequence_number() -> None:
    buffer = RetransmissionBuffer()
    buffer.store(42, packet(42), now=1.0)
    assert buffer.get(42) == packet(42)


def test_a_packet_never_stored_is_not_found() -> None:
    buffer = RetransmissionBuffer(capacity=16)
    buffer.store(1, packet(1), now=0.0)
    assert buffer.get(2) is None
    assert buffer.get(17) is None  # same slot as 1, different packet


def test_an_overwritten_slot_does_not_return_the_newer_packet_for_the_older_seq() -> None:
    buffer = RetransmissionBuffer(capacity=16)
    buffer.store(3, packet(3), now=0.0)
    buffer.store(19, packet(19), now=0.1)
    assert buffer.get(3) is None
    assert buffer.get(19) == packet(19)


def test_the_last_capacity_packets_survive_across_the_sequence_wrap() -> None:
    buffer = RetransmissionBuffer(capacity=1024)
    seqs = [(65000 + i) & 0xFFFF for i in range(1024)]  # 65000..65535 then 0..487
    for seq in seqs:
        buffer.store(seq, packet(seq), now=0.0)
    assert all(buffer.get(seq) == packet(seq) for seq in seqs)
    buffer.store(488, packet(488), now=0.0)
    assert buffer.get(65000) is None
    assert buffer.get(65001) == packet(65001)


def test_packets_older_than_max_age_are_refused_when_now_is_given() -> None:
    buffer = RetransmissionBuffer(capacity=64, max_age=1.0)
    buffer.store(5, packet(5), now=10.0)
    assert buffer.get(5, now=11.0) == packet(5)
    assert buffer.get(5, now=11.5) is None
    assert buffer.get(5) == packet(5)


def test_max_age_rules_out_a_stale_packet_from_a_previous_sequence_cycle() -> None:
    buffer = RetransmissionBuffer(capacity=4, max_age=2.0)
    buffer.store(7, packet(7), now=0.0)
    # 65536 packets later the same 16-bit number comes round again and is asked for.
    assert buffer.get(7, now=30.0) is None


def test_clear_forgets_everything() -> None:
    buffer = RetransmissionBuffer(capacity=8)
    buffer.store(1, packet(1), now=0.0)
    buffer.clear()
    assert buffer.get(1) is None
    assert buffer.capacity == 8


@pytest.mark.parametrize("capacity", [0, 1000, 0x20000, -4])
def test_capacity_must_be_a_power_of_two_dividing_65536(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RetransmissionBuffer(capacity=capacity)
