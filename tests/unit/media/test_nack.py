from __future__ import annotations

import pytest

from salon.media.nack import NackGenerator, NackPoll


def fed(generator: NackGenerator, seqs: list[int], now: float = 0.0) -> list[list[int]]:
    return [generator.on_packet(seq, now) for seq in seqs]


def test_in_order_packets_produce_no_nacks() -> None:
    generator = NackGenerator()
    assert fed(generator, list(range(100, 200))) == [[]] * 100
    assert generator.next_deadline() is None
    assert generator.poll(1.0) == NackPoll()
    assert (generator.nacked, generator.recovered, generator.given_up) == (0, 0, 0)


def test_a_gap_is_reported_at_once() -> None:
    generator = NackGenerator()
    generator.on_packet(10, 0.0)
    assert generator.on_packet(14, 0.01) == [11, 12, 13]
    assert generator.missing == [11, 12, 13]
    assert generator.nacked == 3
    assert generator.requests == 3


def test_a_gap_across_the_wrap_is_reported_in_order() -> None:
    generator = NackGenerator()
    generator.on_packet(65533, 0.0)
    assert generator.on_packet(2, 0.0) == [65534, 65535, 0, 1]


def test_a_late_packet_is_removed_and_counted_as_recovered() -> None:
    generator = NackGenerator()
    fed(generator, [1, 4])
    assert generator.on_packet(2, 0.02) == []
    assert generator.missing == [3]
    assert generator.recovered == 1
    assert generator.on_packet(2, 0.03) == []  # duplicate: nothing more
    assert generator.recovered == 1


def test_duplicates_and_old_packets_are_ignored() -> None:
    generator = NackGenerator()
    fed(generator, [1, 2, 3])
    assert fed(generator, [3, 2, 1]) == [[], [], []]
    assert generator.missing == []


def test_missing_packets_are_renacked_every_retry_interval() -> None:
    generator = NackGenerator(retry_interval=0.04)
    fed(generator, [1, 3])
    assert generator.next_deadline() == pytest.approx(0.04)
    assert generator.poll(0.035) == NackPoll()
    assert generator.poll(0.04) == NackPoll(seqs=(2,))
    assert generator.next_deadline() == pytest.approx(0.08)
    assert generator.poll(0.06) == NackPoll()
    assert generator.poll(0.08) == NackPoll(seqs=(2,))
    assert generator.requests == 3


def test_a_recovered_packet_is_not_renacked() -> None:
    generator = NackGenerator()
    fed(generator, [1, 4])
    generator.on_packet(3, 0.01)
    assert generator.poll(0.05) == NackPoll(seqs=(2,))


def test_a_packet_is_given_up_after_max_retries_and_a_key_frame_is_needed() -> None:
    generator = NackGenerator(retry_interval=0.04, max_retries=10, max_age=10.0)
    fed(generator, [1, 3])
    polls = [generator.poll(0.04 * i) for i in range(1, 11)]
    assert [p.seqs for p in polls[:9]] == [(2,)] * 9  # 1 immediate + 9 re-NACKs = 10
    assert polls[9] == NackPoll(seqs=(), key_frame_needed=True)
    assert generator.given_up == 1
    assert generator.missing == []
    assert generator.next_deadline() is None
    assert generator.requests == 10


def test_a_packet_is_given_up_after_max_age_even_with_retries_left() -> None:
    generator = NackGenerator(retry_interval=0.3, max_retries=10, max_age=1.0)
    fed(generator, [1, 3])
    assert generator.poll(0.3).seqs == (2,)
    assert generator.poll(0.6).seqs == (2,)
    assert generator.poll(0.9).seqs == (2,)
    assert generator.next_deadline() == pytest.approx(1.0)
    assert generator.poll(1.0) == NackPoll((), True)
    assert generator.given_up == 1


def test_a_big_forward_jump_confirmed_by_the_next_packet_restarts_and_asks_for_a_key_frame() -> None:
    generator = NackGenerator(max_jump=1000)
    fed(generator, [1, 2, 4])  # 3 missing
    assert generator.on_packet(5000, 0.01) == []  # a stray packet: ignored for now
    assert generator.missing == [3]
    assert generator.poll(0.01).key_frame_needed is False
    assert generator.on_packet(5001, 0.02) == []  # confirmed: the stream restarted
    assert generator.missing == []
    assert generator.next_deadline() == pytest.approx(0.02)
    assert generator.poll(0.02) == NackPoll((), True)
    assert generator.on_packet(5003, 0.03) == [5002]


def test_a_single_stray_packet_far_away_changes_nothing() -> None:
    generator = NackGenerator(max_jump=1000)
    fed(generator, [100, 101])
    assert generator.on_packet(40000, 0.0) == []
    assert generator.on_packet(102, 0.0) == []
    assert generator.on_packet(104, 0.0) == [103]
    assert generator.poll(0.0).key_frame_needed is False


def test_a_big_backward_jump_confirmed_by_the_next_packet_restarts() -> None:
    generator = NackGenerator(max_jump=1000)
    fed(generator, [30000, 30001])
    fed(generator, [10, 11])
    assert generator.poll(0.0).key_frame_needed is True
    assert generator.on_packet(13, 0.0) == [12]


def test_too_many_missing_packets_clear_the_list_and_ask_for_a_key_frame() -> None:
    generator = NackGenerator(max_missing=100, max_jump=1000)
    generator.on_packet(0, 0.0)
    assert generator.on_packet(500, 0.0) == []
    assert generator.missing == []
    assert generator.poll(0.0) == NackPoll((), True)
    assert generator.on_packet(502, 0.0) == [501]


def test_a_poll_a_hair_before_the_deadline_counts_as_on_time() -> None:
    generator = NackGenerator(retry_interval=0.04)
    fed(generator, [1, 3], now=1.0)
    deadline = generator.next_deadline()
    assert deadline is not None
    assert generator.poll(deadline - 0.0005).seqs == (2,)
    assert generator.poll(deadline + 0.02).seqs == ()


def test_counters_add_up() -> None:
    generator = NackGenerator(retry_interval=0.04, max_retries=2)
    fed(generator, [1, 5])  # 2, 3, 4 missing
    generator.on_packet(3, 0.01)
    generator.poll(0.04)
    generator.poll(0.08)
    assert (generator.nacked, generator.recovered, generator.given_up) == (3, 1, 2)
    assert generator.requests == 3 + 2


def test_reset_starts_over_on_the_next_packet() -> None:
    generator = NackGenerator()
    fed(generator, [1, 5])
    generator.reset()
    assert generator.missing == []
    assert generator.on_packet(9000, 0.0) == []
    assert generator.on_packet(9002, 0.0) == [9001]


def test_max_jump_must_fit_in_half_the_sequence_space() -> None:
    with pytest.raises(ValueError, match="max_jump"):
        NackGenerator(max_jump=40000)


def test_requested_packets_are_chased_like_gaps_and_kept_in_sequence_order() -> None:
    generator = NackGenerator(retry_interval=0.04, max_retries=3)
    fed(generator, [*range(100, 110), 111])  # 110 missing
    assert generator.request([105, 102, 110, 111], 0.01) == [102, 105, 111]  # 110 already chased
    assert generator.missing == [102, 105, 110, 111]
    assert (generator.nacked, generator.requests) == (4, 4)
    assert generator.poll(0.04) == NackPoll(seqs=(110,))
    assert generator.poll(0.05) == NackPoll(seqs=(102, 105, 111))
    generator.on_packet(105, 0.06)
    assert generator.recovered == 1
    assert generator.poll(0.09) == NackPoll(seqs=(102, 110, 111))
    assert generator.poll(0.13) == NackPoll(seqs=(), key_frame_needed=True)  # 3 tries each: given up
    assert generator.given_up == 3 and generator.missing == []
    # A given-up packet is not chased again when asked for later.
    assert generator.request([102, 110], 0.2) == []


def test_requests_outside_the_window_are_ignored() -> None:
    generator = NackGenerator(max_jump=100)
    assert generator.request([5], 0.0) == []  # nothing received yet
    fed(generator, [1000, 1001])
    assert generator.request([1002, 1500, 1001 - 100, 65000], 0.0) == []  # ahead, or too old
    assert generator.request([1001 - 99, 1001], 0.0) == [902, 1001]


def test_requests_across_the_wrap_use_extended_order() -> None:
    generator = NackGenerator()
    fed(generator, [65534, 65535, 0, 1])
    assert generator.request([0, 65535], 0.0) == [65535, 0]
    assert generator.missing == [65535, 0]
    assert generator.on_packet(65535, 0.01) == [] and generator.recovered == 1
