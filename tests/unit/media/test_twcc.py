"""Transport-wide congestion control: the sequence-number extension, feedback bytes both ways,
and the send history mapping feedback back onto what was sent."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salon.media.twcc import (
    MAX_REPORTED_PACKETS,
    FeedbackGenerator,
    PacketResult,
    SendHistory,
    TransportFeedback,
    build_transport_feedback,
    encode_transport_sequence,
    parse_transport_feedback,
    parse_transport_sequence,
)


def test_sequence_extension_round_trip_and_wrap() -> None:
    assert encode_transport_sequence(0x1234) == b"\x12\x34"
    assert encode_transport_sequence(0x10001) == b"\x00\x01"
    assert parse_transport_sequence(b"\xff\xfe") == 0xFFFE
    with pytest.raises(ValueError, match="3 bytes"):
        parse_transport_sequence(b"\x00\x00\x00")


def test_build_known_bytes_two_bit_vector_with_loss_and_negative_delta() -> None:
    # base 5, three packets: received at ref + 1 ms, lost, received 0.5 ms before the first.
    arrivals = [64_000 + 1000, None, 64_000 + 500]
    packet = build_transport_feedback(0x11111111, 0x22222222, 5, arrivals, feedback_count=2)
    expected = (
        bytes.fromhex("8fcd0006")  # V=2 FMT=15 PT=205, 6 words
        + bytes.fromhex("1111111122222222")
        + bytes.fromhex("00050003")  # base 5, 3 packets
        + bytes.fromhex("00000102")  # reference 1 (x64 ms), feedback count 2
        + bytes.fromhex("d200")  # 2-bit vector: small, not received, large
        + bytes.fromhex("04")  # +4 ticks
        + bytes.fromhex("fffe")  # -2 ticks
        + b"\x00\x00\x00"
    )
    assert packet == expected
    parsed = parse_transport_feedback(packet, 4)
    assert parsed == TransportFeedback(0x11111111, 0x22222222, 5, 1, 2, (4, None, -2))
    assert list(parsed.packets()) == [(5, 65_000), (6, None), (7, 64_500)]


def test_parse_run_length_and_one_bit_vector_chunks() -> None:
    # 20 packets received with small deltas (run-length chunk), then a one-bit vector of 14
    # alternating received / lost.
    fixed = bytes.fromhex("0000000100000002fff00022ffffff07")  # base 65520, 34 pkts
    run = (1 << 13) | 20
    vector = 0x8000 | int("10101010101010", 2)
    chunks = run.to_bytes(2, "big") + vector.to_bytes(2, "big")
    deltas = bytes([1] * 20 + [2] * 7)
    feedback = parse_transport_feedback(fixed + chunks + deltas + b"\x00")
    assert feedback.reference_time == -1
    assert feedback.feedback_count == 7
    assert len(feedback.deltas) == 34
    assert feedback.deltas[:21] == (1,) * 20 + (2,)
    assert feedback.deltas[21] is None
    packets = list(feedback.packets())
    assert packets[0] == (65520, -64_000 + 250)
    assert packets[16][0] == 0  # wraps
    assert packets[20] == (4, -64_000 + 20 * 250 + 500)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (bytes(10), "needs at least 16"),
        (bytes.fromhex("00000001000000020000000500000000"), "chunks end after 0"),
        (bytes.fromhex("000000010000000200000001000000002001"), "truncated in its receive deltas"),
        (bytes.fromhex("00000001000000020000001400000000c000c000") + b"\x00", "chunks end after 14"),
        (bytes.fromhex("000000010000000200000001000000006001"), "reserved status symbol 3"),
        (bytes.fromhex("000000010000000200000001000000002000"), "run of 0"),
    ],
)
def test_parse_rejects_malformed(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_transport_feedback(payload)


def test_build_rejects_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match=r"1\.\.8192"):
        build_transport_feedback(1, 2, 0, [], 0)
    with pytest.raises(ValueError, match="at least one received"):
        build_transport_feedback(1, 2, 0, [None, None], 0)
    with pytest.raises(ValueError, match="does not fit two bytes"):
        build_transport_feedback(1, 2, 0, [0, 10_000_000], 0)


_arrivals = st.lists(
    st.one_of(st.none(), st.integers(min_value=-2_000, max_value=8_000_000)),
    min_size=1,
    max_size=400,
).filter(lambda xs: any(x is not None for x in xs))


@settings(max_examples=300, deadline=None)
@given(arrivals=_arrivals, base=st.integers(0, 0xFFFF), count=st.integers(0, 255))
def test_build_parse_round_trip(arrivals: list[int | None], base: int, count: int) -> None:
    # Keep consecutive received arrivals within the two-byte delta range.
    fixed: list[int | None] = []
    previous: int | None = None
    for a in arrivals:
        if a is not None and previous is not None:
            a = previous + max(-8_000_000, min(8_000_000, a - previous))
        fixed.append(a)
        if a is not None:
            previous = a
    packet = build_transport_feedback(7, 9, base, fixed, count)
    assert len(packet) % 4 == 0
    feedback = parse_transport_feedback(packet, 4)
    assert feedback.base_sequence == base
    assert feedback.feedback_count == count
    got = list(feedback.packets())
    assert [s for s, _ in got] == [(base + i) & 0xFFFF for i in range(len(fixed))]
    for (_, arrival), want in zip(got, fixed, strict=True):
        if want is None:
            assert arrival is None
        else:
            assert arrival == want // 250 * 250


@settings(max_examples=200, deadline=None)
@given(symbols=st.lists(st.sampled_from([None, 100, 300_000]), min_size=1, max_size=200))
def test_chunk_encoding_is_compact(symbols: list[int | None]) -> None:
    # Any mix of lost / small / large packets: never more than one chunk per 7 packets + 1.
    arrivals: list[int | None] = []
    t = 0
    for s in symbols:
        if s is None:
            arrivals.append(None)
        else:
            t += s
            arrivals.append(t)
    if all(a is None for a in arrivals):
        arrivals[0] = 0
    packet = build_transport_feedback(1, 2, 0, arrivals, 0)
    n = len(arrivals)
    assert len(packet) <= 20 + 2 * (n // 7 + 1) + 2 * n + 3


def test_send_history_maps_feedback_and_wraps() -> None:
    history = SendHistory(capacity=1024)
    for i in range(70_000):
        seq = history.next_sequence(i * 0.001, 1000 + i % 7)
        assert seq == i & 0xFFFF
    base16 = (70_000 - 10) & 0xFFFF
    arrivals = [1_000_000 + k * 1000 if k != 3 else None for k in range(10)]
    feedback = parse_transport_feedback(build_transport_feedback(1, 2, base16, arrivals, 0), 4)
    results = history.on_feedback(feedback)
    assert [r.sequence for r in results] == list(range(69_990, 70_000))
    assert results[0] == PacketResult(69_990, 69.99, 1000 + 69_990 % 7, 1.0)
    assert results[3].lost and results[3].send_time == pytest.approx(69.993)
    assert results[9].arrival_time == pytest.approx(1.009)
    # The same feedback again reports nothing new; a later one receiving the lost packet does.
    assert history.on_feedback(feedback) == []
    late = parse_transport_feedback(build_transport_feedback(1, 2, (69_993) & 0xFFFF, [1_020_000], 1), 4)
    (again,) = history.on_feedback(late)
    assert again.sequence == 69_993 and again.arrival_time == pytest.approx(1.02)


def test_send_history_ignores_unknown_and_evicted_sequences() -> None:
    history = SendHistory(capacity=16)
    for i in range(40):
        history.next_sequence(float(i), 100)
    # 0..23 were evicted (capacity 16), 40.. were never sent.
    feedback = parse_transport_feedback(build_transport_feedback(1, 2, 20, [0] * 30, 0), 4)
    assert [r.sequence for r in history.on_feedback(feedback)] == list(range(24, 40))
    with pytest.raises(ValueError, match="capacity"):
        SendHistory(capacity=0)
    with pytest.raises(ValueError, match="power of two"):
        SendHistory(capacity=1000)


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=80), count=st.integers(0, 0xFFFF))
def test_parse_never_fails_other_than_value_error(payload: bytes, count: int) -> None:
    data = bytes(8) + b"\x00\x01" + count.to_bytes(2, "big") + bytes(4) + payload
    try:
        feedback = parse_transport_feedback(data)
    except ValueError:
        return
    assert len(feedback.deltas) == count <= MAX_REPORTED_PACKETS


def test_a_feedback_reporting_too_many_packets_is_refused() -> None:
    lost_run = (0x1FFF).to_bytes(2, "big") * 8  # 8 x 8191 packets not received
    data = bytes(8) + b"\x00\x01" + (0xFFFF).to_bytes(2, "big") + bytes(4) + lost_run
    with pytest.raises(ValueError, match="at most 8192"):
        parse_transport_feedback(data)


# --- Feedback generator (toward publishers) ---------------------------------------------------


def _reported(messages: list[bytes]) -> list[tuple[int, int | None]]:
    """(sequence, arrival µs or None) for every packet the messages report, in order."""
    out: list[tuple[int, int | None]] = []
    for message in messages:
        out.extend(parse_transport_feedback(message, 4).packets())
    return out


def test_feedback_generator_reports_arrivals_and_then_nothing_more() -> None:
    generator = FeedbackGenerator(0xAAAA)
    record = generator.recorder()
    assert not generator.pending
    assert generator.build(1234) == []
    for i in range(5):
        record(100 + i, 10.0 + i * 0.001)
    assert generator.pending
    messages = generator.build(1234)
    assert len(messages) == 1
    parsed = parse_transport_feedback(messages[0], 4)
    assert (parsed.sender_ssrc, parsed.media_ssrc, parsed.base_sequence, parsed.feedback_count) == (
        0xAAAA,
        1234,
        100,
        0,
    )
    packets = list(parsed.packets())
    assert [s for s, _ in packets] == [100, 101, 102, 103, 104]
    arrivals = [a for _, a in packets]
    assert all(a is not None for a in arrivals)
    # 1 ms apart, to the 250 µs tick.
    assert [b - a for a, b in itertools.pairwise(arrivals)] == [1000] * 4  # type: ignore[operator]
    assert not generator.pending
    assert generator.build(1234) == []
    record(105, 10.01)
    again = generator.build(1234)
    assert [s for s, _ in _reported(again)] == [105]
    assert parse_transport_feedback(again[0], 4).feedback_count == 1


def test_feedback_generator_reports_loss_as_not_received() -> None:
    generator = FeedbackGenerator(1)
    record = generator.recorder()
    for seq in (10, 11, 14, 15):
        record(seq, 1.0 + seq / 1000)
    reported = _reported(generator.build(7))
    assert [s for s, _ in reported] == [10, 11, 12, 13, 14, 15]
    assert [a is None for _, a in reported] == [False, False, True, True, False, False]


def test_feedback_generator_unwraps_the_sequence_number() -> None:
    generator = FeedbackGenerator(1)
    record = generator.recorder()
    for k, seq in enumerate((65533, 65534, 65535, 0, 1)):
        record(seq, 2.0 + k / 1000)
    reported = _reported(generator.build(7))
    assert [s for s, _ in reported] == [65533, 65534, 65535, 0, 1]
    assert all(a is not None for _, a in reported)
    # Keeps counting across many wraps without a gap.
    for k in range(3 * 65536):
        record((2 + k) & 0xFFFF, 3.0 + k * 1e-5)
        if k % 1000 == 999:
            assert len({s for s, a in _reported(generator.build(7)) if a is None}) == 0


def test_feedback_generator_reordering_within_and_across_reports() -> None:
    generator = FeedbackGenerator(1)
    record = generator.recorder()
    record(1, 1.000)
    record(3, 1.001)
    record(2, 1.002)  # reordered before the report: reported received, later arrival
    reported = dict(_reported(generator.build(7)))
    assert reported[2] is not None and reported[3] is not None
    assert reported[2] > reported[3]
    record(5, 1.010)
    assert dict(_reported(generator.build(7)))[4] is None  # reported lost
    record(4, 1.020)  # arrives after that report: reported again, received
    reported = dict(_reported(generator.build(7)))
    assert reported[4] is not None
    assert reported[4] - reported[5] == 10_000  # type: ignore[operator]


def test_feedback_generator_ignores_packets_too_old_for_its_ring() -> None:
    generator = FeedbackGenerator(1, capacity=16)
    record = generator.recorder()
    for seq in range(100, 140):
        record(seq, 1.0 + seq / 1e4)
    reported = _reported(generator.build(7))
    # Only the last 16 numbers are still held.
    assert [s for s, _ in reported] == list(range(124, 140))
    record(110, 2.0)  # far older than the ring: ignored
    assert not generator.pending


def test_feedback_generator_bounds_each_message() -> None:
    generator = FeedbackGenerator(1, max_packets=64)
    record = generator.recorder()
    # 1000 packets, every third lost, arrivals jittering by up to ~10 ms (two-byte deltas).
    now = 5.0
    for seq in range(1000):
        now += 0.0004 if seq % 2 else 0.011
        if seq % 3:
            record(seq, now)
    messages = generator.build(7)
    assert len(messages) > 1000 // 64
    assert max(len(m) for m in messages) <= 20 + 64 * 2 + 2 * (64 // 7 + 2)
    for message in messages:
        assert len(parse_transport_feedback(message, 4).deltas) <= 64
    reported = _reported(messages)
    # 0 and 999 were lost with nothing received before / after them: not reported yet.
    assert [s for s, _ in reported] == list(range(1, 999))
    assert [a is None for s, a in reported] == [s % 3 == 0 for s in range(1, 999)]
    counts = [parse_transport_feedback(m, 4).feedback_count for m in messages]
    assert counts == list(range(len(messages)))


def test_feedback_generator_splits_where_a_delta_does_not_fit() -> None:
    generator = FeedbackGenerator(1)
    record = generator.recorder()
    record(1, 1.0)
    record(2, 20.0)  # 19 s later: more than a two-byte delta spans
    messages = generator.build(7)
    assert len(messages) == 2
    reported = _reported(messages)
    assert [s for s, _ in reported] == [1, 2]
    assert reported[1][1] - reported[0][1] == 19_000_000  # type: ignore[operator]


def test_feedback_generator_wraps_the_reference_time() -> None:
    generator = FeedbackGenerator(1)
    record = generator.recorder()
    late = 7 * 24 * 3600.0  # a week of uptime: past the signed 24-bit reference range
    record(1, late)
    record(2, late + 0.001)
    (message,) = generator.build(7)
    parsed = parse_transport_feedback(message, 4)
    wrap = (1 << 24) * 64_000
    arrivals = [a for _, a in parsed.packets()]
    assert arrivals[0] is not None and (arrivals[0] - int(late * 1e6)) % wrap < 64_000
    assert arrivals[1] - arrivals[0] == 1000  # type: ignore[operator]


def test_feedback_generator_round_trips_through_a_send_history() -> None:
    """What the SFU builds for a publisher, read by the SFU's own sender side: every packet
    sent is accounted for, lost ones as lost."""
    history = SendHistory()
    stamp = history.stamper()
    generator = FeedbackGenerator(1)
    record = generator.recorder()
    lost = {7, 8, 30}
    for i in range(70_000 // 1000):  # a few hundred packets per round, across a wrap
        for k in range(1000):
            t = i + k / 1000
            seq16 = int.from_bytes(stamp(t, 1000), "big")
            if (i * 1000 + k) % 100 not in lost:
                record(seq16, t + 0.02)
        results = []
        for message in generator.build(7):
            feedback = parse_transport_feedback(message, 4)
            results.extend(history.on_feedback(feedback))
        assert {r.sequence % 100 for r in results if r.lost} <= lost
        assert sum(1 for r in results if not r.lost) == 1000 - len(lost) * 10 or i == 0


def test_feedback_generator_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="power of two"):
        FeedbackGenerator(1, capacity=1000)
    with pytest.raises(ValueError, match="max_packets"):
        FeedbackGenerator(1, max_packets=0)
