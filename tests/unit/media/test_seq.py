from __future__ import annotations

import itertools
import random

import pytest

from salon.media.seq import SequenceRewriter

CLOCK = 90000


def started(
    in_seq: int = 1000, in_ts: int = 50_000, out_seq: int = 100, out_ts: int = 7_000, now: float = 10.0
) -> SequenceRewriter:
    rewriter = SequenceRewriter(initial_seq=out_seq, initial_ts=out_ts)
    assert rewriter.start(in_seq, in_ts, now, CLOCK) == (out_seq, out_ts)
    return rewriter


def seq_out(rewriter: SequenceRewriter, in_seq: int) -> int:
    result = rewriter.rewrite(in_seq, 0)
    assert result is not None
    return result[0]


# --- Starting ----------------------------------------------------------------------------------


def test_first_start_maps_the_start_packet_to_the_initial_values() -> None:
    rewriter = started()
    assert rewriter.rewrite(1000, 50_000) == (100, 7_000)
    assert rewriter.rewrite(1001, 53_000) == (101, 10_000)
    assert rewriter.ts_offset == (7_000 - 50_000) & 0xFFFFFFFF


def test_first_start_without_initial_values_uses_random_ones() -> None:
    rewriters = [SequenceRewriter() for _ in range(8)]
    starts = [r.start(1000, 50_000, 0.0, CLOCK) for r in rewriters]
    for rewriter, start in zip(rewriters, starts, strict=True):
        assert rewriter.rewrite(1000, 50_000) == start
        assert 0 <= start[0] <= 0xFFFF and 0 <= start[1] <= 0xFFFFFFFF
    assert len(set(starts)) > 1


def test_nothing_is_rewritten_before_start() -> None:
    rewriter = SequenceRewriter(initial_seq=1, initial_ts=1)
    assert not rewriter.started
    assert rewriter.rewrite(5, 5) is None
    assert rewriter.to_input(1) is None
    assert rewriter.last_sequence_number is None


def test_packets_from_before_the_start_packet_are_refused() -> None:
    rewriter = started(in_seq=1000)
    assert rewriter.rewrite(999, 47_000) is None
    assert rewriter.rewrite(990, 47_000) is None
    assert rewriter.rewrite(1000, 50_000) == (100, 7_000)
    assert rewriter.rewrite(999, 47_000) is None


def test_max_late_must_fit_in_half_the_sequence_space() -> None:
    with pytest.raises(ValueError, match="max_late"):
        SequenceRewriter(max_late=0x8000)


# --- Wrap-around, loss and reordering ----------------------------------------------------------


def test_input_sequence_wrap_around_gives_continuous_output() -> None:
    rewriter = started(in_seq=65534, out_seq=500)
    outputs = [rewriter.rewrite(seq, 0) for seq in (65534, 65535, 0, 1, 2)]
    assert [o[0] for o in outputs if o] == [500, 501, 502, 503, 504]


def test_output_sequence_wraps_from_65535_to_0() -> None:
    rewriter = started(in_seq=10, out_seq=65534)
    assert [seq_out(rewriter, seq) for seq in (10, 11, 12)] == [65534, 65535, 0]


def test_timestamps_wrap_around_32_bits() -> None:
    rewriter = started(in_ts=0xFFFFFF00, out_ts=0xFFFFFFF0)
    assert rewriter.rewrite(1000, 0xFFFFFF00) == (100, 0xFFFFFFF0)
    assert rewriter.rewrite(1001, 0x00000100) == (101, 0x1F0)
    assert rewriter.rewrite_timestamp(0xFFFFFF10) == 0
    assert rewriter.last_timestamp == 0x1F0


def test_a_loss_stays_a_gap_so_the_subscriber_can_nack_it() -> None:
    rewriter = started()
    assert rewriter.rewrite(1000, 0) == (100, 7_000 - 50_000 & 0xFFFFFFFF)
    assert seq_out(rewriter, 1003) == 103


def test_late_packets_get_the_number_they_would_have_had() -> None:
    rewriter = started()
    assert rewriter.rewrite(1000, 50_000) == (100, 7_000)
    assert rewriter.rewrite(1002, 56_000) == (102, 13_000)
    assert rewriter.rewrite(1001, 53_000) == (101, 10_000)
    assert rewriter.last_sequence_number == 102
    assert rewriter.last_timestamp == 13_000


def test_late_packets_across_the_wrap_are_mapped_back_correctly() -> None:
    rewriter = started(in_seq=65530, out_seq=0)
    rewriter.rewrite(65530, 0)
    assert rewriter.rewrite(3, 0) == (9, 7_000 - 50_000 & 0xFFFFFFFF)
    assert seq_out(rewriter, 65535) == 5
    assert seq_out(rewriter, 0) == 6


def test_duplicates_get_the_same_output() -> None:
    rewriter = started()
    first = rewriter.rewrite(1001, 53_000)
    assert rewriter.rewrite(1001, 53_000) == first


def test_packets_more_than_max_late_behind_are_refused() -> None:
    rewriter = SequenceRewriter(initial_seq=0, initial_ts=0, max_late=100)
    rewriter.start(0, 0, 0.0, CLOCK)
    rewriter.rewrite(0, 0)
    rewriter.rewrite(300, 0)
    assert rewriter.rewrite(200, 0) == (200, 0)
    assert rewriter.rewrite(199, 0) is None


# --- Dropping ----------------------------------------------------------------------------------


def test_dropping_the_newest_packet_leaves_no_gap() -> None:
    rewriter = started()
    assert seq_out(rewriter, 1000) == 100
    rewriter.drop(1001)
    assert seq_out(rewriter, 1002) == 101
    rewriter.drop(1003)
    rewriter.drop(1004)
    assert seq_out(rewriter, 1005) == 102


def test_a_dropped_packet_is_never_forwarded_even_if_it_comes_again() -> None:
    rewriter = started()
    rewriter.rewrite(1000, 0)
    rewriter.drop(1001)
    assert rewriter.rewrite(1001, 0) is None


def test_late_packets_before_a_drop_keep_their_numbers() -> None:
    rewriter = started()
    rewriter.rewrite(1000, 0)
    rewriter.drop(1002)  # 1001 is still missing
    assert seq_out(rewriter, 1003) == 102
    assert seq_out(rewriter, 1001) == 101


def test_dropping_a_packet_older_than_the_newest_is_a_no_op() -> None:
    rewriter = started()
    rewriter.rewrite(1000, 0)
    rewriter.rewrite(1002, 0)
    rewriter.drop(1001)
    assert seq_out(rewriter, 1003) == 103
    assert seq_out(rewriter, 1001) == 101


def test_drop_before_start_is_ignored() -> None:
    rewriter = SequenceRewriter(initial_seq=0, initial_ts=0)
    rewriter.drop(5)
    rewriter.start(6, 0, 0.0, CLOCK)
    assert rewriter.rewrite(6, 0) == (0, 0)


def test_old_drops_are_folded_without_changing_the_mapping() -> None:
    rewriter = SequenceRewriter(initial_seq=0, initial_ts=0, max_late=50)
    rewriter.start(0, 0, 0.0, CLOCK)
    out = 0
    for seq in range(0, 1000):
        if seq % 3 == 1:
            rewriter.drop(seq)
            continue
        assert rewriter.rewrite(seq, 0) == (out, 0)
        out += 1
    assert [rewriter.to_input(out - n) for n in (1, 2, 3, 4)] == [999, 998, 996, 995]


# --- Restarting: pause, resume, switch ---------------------------------------------------------


def test_restart_continues_sequence_and_advances_timestamp_by_elapsed_time() -> None:
    rewriter = started(now=10.0)
    rewriter.rewrite(1000, 50_000, now=10.0)
    rewriter.rewrite(1001, 53_000, now=10.033)
    # Paused for a while; resumes 2 s after the last forwarded packet, on a key frame.
    assert rewriter.start(1500, 900_000, 12.033, CLOCK) == (102, 10_000 + 2 * CLOCK)
    assert rewriter.rewrite(1500, 900_000) == (102, 10_000 + 2 * CLOCK)
    assert rewriter.rewrite(1501, 903_000) == (103, 13_000 + 2 * CLOCK)


def test_switching_to_an_unrelated_source_keeps_the_output_continuous() -> None:
    rewriter = started(in_seq=1000, in_ts=50_000, now=1.0)
    for i in range(10):
        rewriter.rewrite(1000 + i, 50_000 + 3000 * i, now=1.0 + i / 30)
    rewriter.start(40_000, 3_000_000_000, 1.0 + 10 / 30, CLOCK)
    outputs = [
        rewriter.rewrite(40_000 + i, 3_000_000_000 + 3000 * i, now=1.0 + (10 + i) / 30) for i in range(5)
    ]
    assert [o[0] for o in outputs if o] == [110, 111, 112, 113, 114]
    assert [o[1] for o in outputs if o] == [7_000 + 3000 * i for i in range(10, 15)]


def test_restart_without_now_in_rewrite_estimates_elapsed_time_from_the_last_start() -> None:
    rewriter = started(now=10.0)
    for i in range(30):  # one second of 30 fps video, rewrite() not given `now`
        rewriter.rewrite(1000 + i, 50_000 + 3000 * i)
    assert rewriter.start(2000, 0, 15.0, CLOCK) == (130, 7_000 + 5 * CLOCK)


def test_restart_at_the_same_instant_still_advances_the_timestamp() -> None:
    rewriter = started(now=10.0)
    rewriter.rewrite(1000, 50_000, now=10.0)
    assert rewriter.start(7, 0, 10.0, CLOCK) == (101, 7_001)


def test_restart_never_moves_the_timestamp_backwards() -> None:
    rewriter = started(now=10.0)
    # The source's clock runs ahead of ours: its timestamps say 2 s, our clock 0.5 s.
    rewriter.rewrite(1000, 50_000)
    rewriter.rewrite(1001, 50_000 + 2 * CLOCK)
    assert rewriter.start(5000, 0, 10.5, CLOCK) == (102, 7_000 + 2 * CLOCK + 1)


def test_restart_before_any_output_reuses_the_unused_number() -> None:
    rewriter = started(now=0.0)
    assert rewriter.start(3000, 0, 0.5, CLOCK) == (100, 7_000 + CLOCK // 2)
    assert rewriter.rewrite(3000, 0) == (100, 7_000 + CLOCK // 2)


def test_restart_forgets_earlier_drops() -> None:
    rewriter = started()
    rewriter.rewrite(1000, 0)
    rewriter.drop(1001)
    rewriter.start(1002, 0, 11.0, CLOCK)
    assert seq_out(rewriter, 1002) == 101
    assert rewriter.rewrite(1001, 0) is None  # from before the new start


# --- Mapping NACKs back ------------------------------------------------------------------------


def test_to_input_maps_output_seqs_back_to_input_seqs() -> None:
    rewriter = started(in_seq=65534, out_seq=65535)
    for seq in (65534, 65535, 0, 1):
        rewriter.rewrite(seq, 0)
    assert [rewriter.to_input(out) for out in (65535, 0, 1, 2)] == [65534, 65535, 0, 1]


def test_to_input_skips_over_drops() -> None:
    rewriter = started()
    rewriter.rewrite(1000, 0)
    rewriter.drop(1001)
    rewriter.drop(1002)
    rewriter.rewrite(1003, 0)
    rewriter.drop(1004)
    rewriter.rewrite(1005, 0)
    assert [rewriter.to_input(out) for out in (100, 101, 102)] == [1000, 1003, 1005]


def test_to_input_refuses_numbers_not_produced_from_the_current_source() -> None:
    rewriter = started()
    assert rewriter.to_input(100) is None  # nothing produced yet
    rewriter.rewrite(1000, 0)
    rewriter.rewrite(1001, 0)
    assert rewriter.to_input(102) is None  # not produced yet
    assert rewriter.to_input(99) is None  # before the start
    rewriter.start(5000, 0, 11.0, CLOCK)
    rewriter.rewrite(5000, 0)
    assert rewriter.to_input(101) is None  # from the previous source
    assert rewriter.to_input(102) == 5000


def test_to_input_refuses_numbers_older_than_max_late() -> None:
    rewriter = SequenceRewriter(initial_seq=0, initial_ts=0, max_late=10)
    rewriter.start(0, 0, 0.0, CLOCK)
    for seq in range(30):
        rewriter.rewrite(seq, 0)
    assert rewriter.to_input(19) == 19
    assert rewriter.to_input(18) is None


# --- Property test -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_with_reordering_loss_and_drops_stay_continuous_and_invertible(seed: int) -> None:
    rng = random.Random(seed)
    first_in = rng.randrange(0x10000)
    first_out = rng.randrange(0x10000)
    count = rng.randrange(50, 3000)
    # Input order: sequential with random local swaps (reordering) and losses.
    order = list(range(count))
    for _ in range(count // 10):
        i = rng.randrange(1, count - 1)
        order[i], order[i + 1] = order[i + 1], order[i]
    lost = {i for i in range(1, count) if rng.random() < 0.05}
    rewriter = SequenceRewriter(initial_seq=first_out, initial_ts=rng.randrange(1 << 32))
    assert order[0] == 0 and 0 not in lost
    rewriter.start(first_in, 0, 0.0, CLOCK)
    newest = -1
    dropped: set[int] = set()
    forwarded: dict[int, int] = {}  # input index -> extended output number
    for index in order:
        if index in lost:
            continue
        seq = (first_in + index) & 0xFFFF
        if index > newest and rng.random() < 0.1:
            rewriter.drop(seq)
            dropped.add(index)
            newest = index
            continue
        newest = max(newest, index)
        result = rewriter.rewrite(seq, index * 3000)
        assert result is not None
        out = (result[0] - first_out) & 0xFFFF
        forwarded[index] = out
        assert result[1] == rewriter.rewrite_timestamp(index * 3000)
    indices = sorted(forwarded)
    # Monotonic: input order is output order; the gaps are exactly the lost packets.
    for a, b in itertools.pairwise(indices):
        skipped_lost = sum(1 for i in range(a + 1, b) if i in lost)
        assert forwarded[b] - forwarded[a] == 1 + skipped_lost
    # Every forwarded packet maps back for NACKs.
    for index, out in forwarded.items():
        assert rewriter.to_input((first_out + out) & 0xFFFF) == (first_in + index) & 0xFFFF
    assert not dropped & set(forwarded)
