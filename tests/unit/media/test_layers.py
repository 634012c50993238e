"""LayerSwitcher on recorded-like simulcast traces: three VP8 encodings sent interleaved, as
Chromium sends them (each its own sequence numbers, timestamps, picture IDs and TL0PICIDX,
temporal pattern 0-2-1-2), key frames only where the trace puts them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from salon.media.layers import CUT_SEQUENCE_GAP, LayerSwitcher
from salon.media.rtp import is_h264_keyframe
from salon.media.vp8 import parse_vp8_descriptor
from tests.unit.media.test_vp8 import descriptor

TEMPORAL_PATTERN = (0, 2, 1, 2)


@dataclass
class Packet:
    layer: int
    seq: int
    ts: int
    payload: bytes
    key: bool
    now: float
    frame: int


def vp8_trace(frames: int, key_frames: dict[int, set[int]], *, packets_per_frame: int = 2) -> list[Packet]:
    """``frames`` frames at 30 fps for layers 0..2, interleaved per frame; ``key_frames``:
    layer -> frame numbers that are key frames (frame 0 always is)."""
    bases = [(1000 * (i + 1) + 65500 * (i == 2), 12345 * (i + 1), 32760 + i * 7, 250 + i) for i in range(3)]
    seqs = [b[0] for b in bases]
    tl0s = [b[3] for b in bases]
    out: list[Packet] = []
    for frame in range(frames):
        now = frame / 30
        for layer in range(3):
            _, ts0, pid0, _ = bases[layer]
            key = frame == 0 or frame in key_frames.get(layer, set())
            tid = 0 if key else TEMPORAL_PATTERN[frame % 4]
            if tid == 0 and frame:
                tl0s[layer] = (tl0s[layer] + 1) & 0xFF
            pid = (pid0 + frame) & 0x7FFF
            for part in range(packets_per_frame):
                payload = descriptor(
                    start=part == 0,
                    picture_id=pid,
                    tl0=tl0s[layer],
                    tid=tid,
                    sync=tid > 0 and TEMPORAL_PATTERN[frame % 4] == 2 and frame % 4 == 1,
                    key=key and part == 0,
                )
                out.append(
                    Packet(
                        layer,
                        seqs[layer] & 0xFFFF,
                        (ts0 + frame * 3000) & 0xFFFFFFFF,
                        payload,
                        key and part == 0,
                        now,
                        frame,
                    )
                )
                seqs[layer] += 1
    return out


@dataclass
class Out:
    layer: int
    seq: int
    ts: int
    picture_id: int | None
    tl0: int | None
    tid: int | None
    key: bool
    frame: int


def run(
    switcher: LayerSwitcher, trace: list[Packet], targets: dict[int, tuple[int, int | None]] | None = None
) -> list[Out]:
    sent: list[Out] = []
    for p in trace:
        if targets and p.frame in targets and p.layer == 0 and p.payload[0] & 0x10:
            switcher.set_target(*targets[p.frame])
        result = switcher.forward(p.layer, p.seq, p.ts, p.payload, p.key, p.now)
        if result is None:
            continue
        seq, ts, prefix = result
        payload = (prefix or b"") + p.payload[len(prefix or b"") :]
        d = parse_vp8_descriptor(payload)
        sent.append(Out(p.layer, seq, ts, d.picture_id, d.tl0_pic_idx, d.tid, p.key, p.frame))
    return sent


def assert_continuous(sent: list[Out]) -> None:
    for a, b in itertools.pairwise(sent):
        assert b.seq == (a.seq + 1) & 0xFFFF, f"sequence gap {a} -> {b}"
        assert 0 <= (b.ts - a.ts) & 0xFFFFFFFF < 0x80000000, f"timestamp went back {a} -> {b}"
        if (b.layer, b.frame) != (a.layer, a.frame):
            assert b.picture_id == (a.picture_id + 1) & 0x7FFF, f"picture ID gap {a} -> {b}"
            assert b.ts != a.ts, f"two frames with one timestamp {a} -> {b}"
            if b.tid == 0:
                assert b.tl0 == (a.tl0 + 1) & 0xFF, f"TL0PICIDX not +1 at a base frame {a} -> {b}"
            else:
                assert b.tl0 == a.tl0, f"TL0PICIDX changed outside the base layer {a} -> {b}"
        else:
            assert (b.picture_id, b.tl0, b.ts) == (a.picture_id, a.tl0, a.ts)


def test_starts_on_the_top_layer_key_frame_and_forwards_only_it() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3, initial_seq=65530, initial_ts=1)
    sent = run(switcher, vp8_trace(40, {}))
    assert {o.layer for o in sent} == {2}
    assert sent[0].key and sent[0].seq == 65530 and sent[0].ts == 1
    assert len(sent) == 80
    assert_continuous(sent)


def test_nothing_before_the_target_key_frame() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    switcher.set_target(1)
    trace = [p for p in vp8_trace(30, {1: {12}}) if not (p.layer == 1 and p.frame == 0)]
    sent = run(switcher, trace)
    assert sent and sent[0].frame == 12 and sent[0].key and {o.layer for o in sent} == {1}
    assert switcher.waiting is False


def test_switch_down_and_up_waits_for_key_frames_and_stays_continuous() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    # Ask for layer 0 at frame 10 (its key frame comes at 17), back to 2 at 30 (key at 41).
    trace = vp8_trace(60, {0: {17}, 2: {41}, 1: {20}})
    sent = run(switcher, trace, {10: (0, None), 30: (2, None)})
    layers_by_frame = {o.frame: o.layer for o in sent}
    assert all(layers_by_frame[f] == 2 for f in range(0, 17)), "switched down before layer 0's key frame"
    assert all(layers_by_frame[f] == 0 for f in range(17, 41))
    assert all(layers_by_frame[f] == 2 for f in range(41, 60))
    assert [o.frame for o in sent if o.key] == [0, 17, 41]
    assert switcher.switches == 3
    assert_continuous(sent)


def test_temporal_layers_are_dropped_without_gaps() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    switcher.set_target(2, 0)
    sent = run(switcher, vp8_trace(40, {}))
    assert {o.tid for o in sent} == {0}
    assert sorted({o.frame for o in sent}) == list(range(0, 40, 4))
    assert switcher.temporal_dropped == 30 * 2
    assert_continuous(sent)


def test_temporal_layers_come_back_at_a_sync_point() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    # All layers, then TID<=1 from frame 8, then all again from frame 21 (takes effect at the
    # next frame that does not need what was dropped: frame 21, TID 2 with the sync bit).
    sent = run(switcher, vp8_trace(40, {}), {8: (2, 1), 21: (2, None)})
    frames = sorted({o.frame for o in sent})
    assert [f for f in frames if 8 <= f < 21] == [8, 10, 12, 14, 16, 18, 20]
    assert all(f in frames for f in range(21, 40))
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    # From TID<=0 back to all at frame 22 (TID 1, no sync bit): waits for frame 24 (TID 0).
    sent = run(switcher, vp8_trace(40, {}), {8: (2, 0), 22: (2, None)})
    frames = sorted({o.frame for o in sent})
    assert [f for f in frames if 8 <= f < 25] == [8, 12, 16, 20, 24]
    assert all(f in frames for f in range(24, 40))
    assert_continuous(sent)


def test_late_packet_keeps_its_picture_id_and_old_layer_packets_are_refused() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=2)
    trace = [p for p in vp8_trace(12, {0: {6}}) if p.layer < 2]
    first = run(switcher, trace[:8])  # frames 0..1 of layers 0 and 1: layer 1 forwarded
    assert {o.layer for o in first} == {1}
    late = trace[7]  # layer 1, frame 1, second packet, again
    again = switcher.forward(late.layer, late.seq, late.ts, late.payload, False, 1.0)
    assert again is not None and again[0] == first[3].seq
    prefix = again[2] or b""
    assert parse_vp8_descriptor(prefix + late.payload[len(prefix) :]).picture_id == first[3].picture_id
    switcher.set_target(0)
    rest = run(switcher, trace[8:])
    assert [o.frame for o in rest if o.layer == 1] == [f for f in range(2, 6) for _ in range(2)]
    assert next(o for o in rest if o.layer == 0).frame == 6
    assert switcher.forward(1, trace[7].seq, trace[7].ts, trace[7].payload, False, 2.0) is None
    assert switcher.rewrite_retransmission(1, trace[7].payload) == (False, None)
    ok, prefix = switcher.rewrite_retransmission(0, trace[-1].payload)
    assert ok and prefix is not None


def test_nack_mapping_through_the_sequence_rewriter() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    trace = vp8_trace(8, {})
    sent = run(switcher, trace)
    top = [p for p in trace if p.layer == 2]
    assert switcher.sequence.to_input(sent[5].seq) == top[5].seq


def test_reset_restarts_on_a_key_frame_continuously() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    trace = vp8_trace(30, {2: {20}})
    before = run(switcher, [p for p in trace if p.frame < 10])
    switcher.reset()
    after = run(switcher, [p for p in trace if p.frame >= 10])
    assert after[0].frame == 20 and after[0].key
    assert_continuous(before + after)


def h264(nal_type: int, fu_start: bool | None = None) -> bytes:
    if fu_start is None:
        return bytes([0x60 | nal_type]) + bytes(30)
    return bytes([0x7C, (0x80 if fu_start else 0) | nal_type]) + bytes(30)


def test_h264_switch_at_idr() -> None:
    switcher = LayerSwitcher("h264", 90000, layers=2)
    out: list[tuple[int, int, int]] = []
    seqs = [100, 40000]
    for frame in range(30):
        for layer in (0, 1):
            idr = frame == 0 or (layer == 0 and frame == 15)
            packets = (
                [h264(7), h264(8), h264(5, True), h264(5, False)] if idr else [h264(1, True), h264(1, False)]
            )
            if frame == 10 and layer == 0:
                switcher.set_target(0)
            for payload in packets:
                result = switcher.forward(
                    layer,
                    seqs[layer],
                    (layer * 777 + frame * 3000) & 0xFFFFFFFF,
                    payload,
                    is_h264_keyframe(payload),
                    frame / 30,
                )
                seqs[layer] += 1
                if result is not None:
                    assert result[2] is None
                    out.append((layer, result[0], frame))
    assert [f for layer, _, f in out if layer == 1] == [
        f for f in range(15) for _ in range(4 if f == 0 else 2)
    ]
    assert out[next(i for i, o in enumerate(out) if o[0] == 0)][2] == 15
    assert all(b[1] == (a[1] + 1) & 0xFFFF for a, b in itertools.pairwise(out))


def test_a_new_switcher_continues_the_picture_ids_of_the_previous_one() -> None:
    first = LayerSwitcher("vp8", 90000, layers=3)
    before = run(first, vp8_trace(10, {}))
    second = LayerSwitcher("vp8", 90000, layers=3, sequence=first.sequence)
    second.continue_from(first)
    after = run(second, vp8_trace(10, {}))
    assert after[0].seq == (before[-1].seq + 1) & 0xFFFF
    assert after[0].picture_id == (before[-1].picture_id + 1) & 0x7FFF
    assert after[0].tl0 == (before[-1].tl0 + 1) & 0xFF


def test_a_cut_stops_the_old_layer_at_the_end_of_its_frame_and_switches_at_the_key_frame() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    # Three packets per frame; at the second packet of frame 10 the link collapses: target
    # layer 0 (its key frame comes at frame 17), cut the top layer.
    trace = vp8_trace(30, {0: {17}}, packets_per_frame=3)
    cut_at = next(i for i, p in enumerate(trace) if p.layer == 2 and p.frame == 10) + 1
    before = run(switcher, trace[:cut_at])
    switcher.set_target(0)
    assert switcher.cut() and switcher.cutting
    rest = run(switcher, trace[cut_at:])
    sent = before + rest
    # Frame 10 of the top layer ends (no half frame), nothing more of it after that.
    assert [o.frame for o in sent if o.layer == 2][-3:] == [10, 10, 10]
    assert max(o.frame for o in sent if o.layer == 2) == 10
    assert switcher.cuts == 1 and not switcher.cutting
    assert next(o.frame for o in sent if o.layer == 0) == 17 and rest[2].key
    assert switcher.current_layer == 0 and switcher.switches == 2
    # The sequence numbers jump at the cut (the receiver gives up on the cut layer's lost
    # packets); picture IDs, TL0PICIDX and timestamps stay continuous.
    first = len(before) + 2
    assert sent[first].seq == (sent[first - 1].seq + 1 + CUT_SEQUENCE_GAP) & 0xFFFF
    assert switcher.sequence.to_input((sent[first - 1].seq + 5) & 0xFFFF) is None
    assert_continuous(sent[:first])
    assert_continuous(sent[first:])
    shifted = [*sent[:first], *(replace(o, seq=(o.seq - CUT_SEQUENCE_GAP) & 0xFFFF) for o in sent[first:])]
    assert_continuous(shifted)
    # While cut, the old layer's packets are not retransmitted either.
    switcher2 = LayerSwitcher("vp8", 90000, layers=3)
    run(switcher2, trace[:cut_at])
    switcher2.set_target(0)
    switcher2.cut()
    run(switcher2, [p for p in trace[cut_at:] if p.frame < 12])
    assert switcher2.current_layer is None and switcher2.waiting
    assert switcher2.rewrite_retransmission(2, trace[0].payload) == (False, None)


def test_a_cut_needs_a_different_target_and_is_undone_by_going_back() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    trace = vp8_trace(20, {})
    run(switcher, trace[:12])
    assert not switcher.cut()  # the target is the current layer: nothing to cut
    switcher.set_target(1)
    assert switcher.cut()
    switcher.set_target(2)  # the estimate came back before the frame ended
    assert not switcher.cutting
    rest = run(switcher, trace[12:])
    assert {o.layer for o in rest} == {2} and switcher.cuts == 0
    # Before the first start there is nothing to cut.
    assert not LayerSwitcher("vp8", 90000, layers=3).cut()


def test_a_cut_waits_for_a_newer_frame_not_a_late_packet() -> None:
    switcher = LayerSwitcher("vp8", 90000, layers=3)
    trace = [p for p in vp8_trace(10, {}, packets_per_frame=3) if p.layer == 2]
    sent = run(switcher, trace[:14])  # frames 0..3, and the first two packets of frame 4
    switcher.set_target(1)
    switcher.cut()
    late = trace[10]  # frame 3 again (a retransmission from the publisher)
    again = switcher.forward(late.layer, late.seq, late.ts, late.payload, False, 1.0)
    assert again is not None and again[0] == sent[10].seq
    assert switcher.cutting
    last = trace[14]  # frame 4's last packet: still forwarded
    assert switcher.forward(last.layer, last.seq, last.ts, last.payload, False, 1.0) is not None
    nxt = trace[15]  # frame 5: cut
    assert switcher.forward(nxt.layer, nxt.seq, nxt.ts, nxt.payload, False, 1.0) is None
    assert switcher.current_layer is None and switcher.cuts == 1
