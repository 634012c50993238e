"""Layer measurement and the allocator at work on a subscriber transport, without sockets: a
simulcast publisher's three encodings (VP8, three temporal layers each, key frames carrying
their resolution) measured by the producer; the transport's allocation picks each consumer's
layer from the estimate and the subscriber's preferences, pauses it for quality when even the
lowest layer does not fit, resumes it, and pads when layers are held back."""

from __future__ import annotations

import fractions
from typing import Any

import av
import pytest

from salon.media.allocation import PROBE_STABLE_FOR, TransportAllocation
from salon.media.consumer import ConsumerQualityChanged, PauseReason
from salon.media.layer_meter import EncodingMeter, h264_sps_resolution, vp8_key_frame_resolution
from salon.media.layers import CUT_SEQUENCE_GAP
from salon.media.rtp import parse_rtp_header
from tests.unit.media.media_fakes import add_consumer
from tests.unit.media.test_simulcast_forwarding import Publisher
from tests.unit.media.test_vp8 import descriptor

SIZES = ((320, 180), (640, 360), (1280, 720))
#: Bytes per frame for each encoding (about 150 kb/s, 500 kb/s, 1.5 Mb/s at 30 fps).
FRAME_BYTES = (600, 2000, 6000)
#: Chromium's three temporal layers: TID pattern over four frames (7.5 / 15 / 30 fps).
TIDS = (0, 2, 1, 2)


def key_payload(width: int, height: int, *, tid: int = 0, picture_id: int = 1, tl0: int = 0) -> bytes:
    """A VP8 key frame's first packet: descriptor, frame tag, start code, size."""
    head = descriptor(start=True, picture_id=picture_id, tl0=tl0, tid=tid, key=True)
    size = len(head) - 21  # descriptor() appends a 1-byte frame tag + 20 bytes
    return (
        head[:size]
        + bytes([0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A])
        + width.to_bytes(2, "little")
        + height.to_bytes(2, "little")
        + bytes(20)
    )


def test_vp8_key_frame_header_gives_the_resolution() -> None:
    payload = key_payload(1280, 720)
    head = descriptor(start=True, picture_id=1, tl0=0, tid=0, key=True)
    assert vp8_key_frame_resolution(payload, len(head) - 21) == (1280, 720)
    assert vp8_key_frame_resolution(head, len(head) - 21) is None  # no start code
    assert vp8_key_frame_resolution(b"\x10\x01" + bytes(20), 1) is None  # inter frame


@pytest.mark.parametrize("size", [(320, 180), (640, 360), (1280, 720), (176, 144)])
def test_h264_sps_gives_the_resolution(size: tuple[int, int]) -> None:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = size
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    frame = av.VideoFrame(size[0], size[1], "yuv420p")
    data = b"".join(bytes(p) for p in encoder.encode(frame) + encoder.encode(None))
    nals = [n for n in data.split(b"\x00\x00\x01") if n]
    sps = next(n.rstrip(b"\x00") for n in nals if n[0] & 0x1F == 7)
    assert h264_sps_resolution(sps) == size
    # Inside a STAP-A with the PPS, as browsers send it.
    pps = next(n.rstrip(b"\x00") for n in nals if n[0] & 0x1F == 8)
    stap = bytes([24]) + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    assert h264_sps_resolution(stap) == size
    assert h264_sps_resolution(pps) is None


def test_meter_measures_each_temporal_layer() -> None:
    meter = EncodingMeter("VP8")
    now = 0.0
    for frame in range(90):  # three seconds at 30 fps
        tid = TIDS[frame % 4]
        payload = key_payload(640, 360, tid=tid) if frame == 0 else descriptor(start=True, tid=tid, tl0=0)
        meter.on_packet(memoryview(payload), 1000, frame == 0, now)
        meter.on_packet(memoryview(descriptor(start=False, tid=tid, tl0=0)), 1000, False, now)
        now += 1 / 30
    assert meter.temporal_layers == 3
    assert (meter.width, meter.height) == (640, 360)
    fps = meter.frame_rates
    assert fps[0] == pytest.approx(7.5, abs=1) and fps[1] == pytest.approx(7.5, abs=1)
    assert fps[2] == pytest.approx(15, abs=1.5)
    total = sum(meter.bitrates)
    assert total == pytest.approx(30 * 2000 * 8, rel=0.1)
    assert meter.bitrates[2] == pytest.approx(total / 2, rel=0.15)


class Simulcast(Publisher):
    """The test publisher with real sizes per encoding and three temporal layers."""

    def send_frame(self, keys: tuple[int, ...] = ()) -> None:
        tid = TIDS[self.frame % 4]
        for layer in range(3):
            key = self.frame == 0 or layer in keys
            pid, tl0 = self.pid[layer] & 0x7FFF, self.tl0[layer]
            first = (
                key_payload(*SIZES[layer], tid=0, picture_id=pid, tl0=tl0)
                if key
                else descriptor(start=True, picture_id=pid, tl0=tl0, tid=tid)
            )
            rest = descriptor(start=False, picture_id=pid, tl0=tl0, tid=0 if key else tid)
            self.receive(self.packet(layer, first + bytes(FRAME_BYTES[layer] // 2)))
            self.receive(self.packet(layer, rest + bytes(FRAME_BYTES[layer] // 2)))
            self.pid[layer] += 1
            if key or tid == 0:
                self.tl0[layer] = (self.tl0[layer] + 1) & 0xFF
            self.ts[layer] += 3000
        self.frame += 1
        self.now += 1 / 30


def limit(sub: Any, rate: int, now: float) -> None:
    """The subscriber's REMB at ``rate``, and its budget (as its receiver reports' loss would
    have cut it; :func:`test_budget_of_a_remb_only_subscriber` tests that part)."""
    sub.bandwidth.on_remb(rate, now)
    allocation: TransportAllocation = sub.allocation
    allocation._budget = float(rate)


def run(pub: Simulcast, allocation: TransportAllocation, consumers: dict[str, Any], seconds: float) -> None:
    end = pub.now + seconds
    while pub.now < end:
        keys = (0, 1, 2) if pub.frame % 30 == 0 else ()
        pub.send_frame(keys)
        allocation.run(consumers, pub.now)


def setup() -> tuple[Simulcast, Any, Any, TransportAllocation, dict[str, Any], list[bool]]:
    pub = Simulcast()
    consumer, sub = add_consumer(pub.producer, 9000)
    allocation = TransportAllocation(sub.bandwidth)
    sub.allocation = allocation
    events: list[bool] = []
    consumer.events.add_listener(
        lambda e: events.append(e.paused) if isinstance(e, ConsumerQualityChanged) else None
    )
    return pub, consumer, sub, allocation, {consumer.id: consumer}, events


def test_producer_layers_carry_measured_bitrate_frame_rate_and_resolution() -> None:
    pub = Simulcast()
    # Before any key frame of the lower encodings is seen, their size is assumed from the top.
    pub.send_frame(keys=(2,))
    for _ in range(60):
        pub.send_frame()
    layers = pub.producer.layers(pub.now)
    assert [(layer.spatial, layer.temporal) for layer in layers] == [
        (s, t) for s in range(3) for t in range(3)
    ]
    for layer in layers:
        assert (layer.width, layer.height) == SIZES[layer.spatial]
        assert layer.frame_rate == pytest.approx((7.5, 15, 30)[layer.temporal], abs=2)
    tops = [layer.bitrate for layer in layers if layer.temporal == 2]
    assert tops[0] < tops[1] < tops[2]
    assert tops[2] == pytest.approx(30 * (FRAME_BYTES[2] + 2 * 60) * 8, rel=0.2)


def test_allocator_picks_the_layer_the_estimate_carries_and_climbs_back() -> None:
    pub, consumer, sub, allocation, consumers, events = setup()
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 2.5)
    assert consumer.wanted_layer == (2, None) and consumer.current_layer == 2
    # 700 kb/s: the middle encoding (about 520 kb/s with headers) fits, the top does not.
    limit(sub, 700_000, pub.now)
    run(pub, allocation, consumers, 1.5)
    assert consumer.wanted_layer == (1, None) and consumer.current_layer == 1
    # 120 kb/s: the lowest encoding at 15 fps (its 30 fps take about 160 kb/s).
    limit(sub, 120_000, pub.now)
    run(pub, allocation, consumers, 1.5)
    assert consumer.wanted_layer == (0, 1)
    assert not events
    # The limit lifts: back to the top, the budget growing with what the link was seen to
    # carry (media and padding), in a few seconds.
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 5.0)
    assert consumer.wanted_layer == (2, None) and consumer.current_layer == 2


def test_too_little_for_any_video_pauses_for_quality_then_resumes_with_hysteresis() -> None:
    pub, consumer, sub, allocation, consumers, events = setup()
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 2.0)
    limit(sub, 30_000, pub.now)  # below the lowest layer at 7.5 fps (about 40 kb/s)
    run(pub, allocation, consumers, 1.0)
    assert consumer.quality_paused and events == [True]
    # Just enough for the lowest layer is not enough to resume (20% margin), nor is a lift
    # within the hold time.
    limit(sub, 5_000_000, pub.now)
    allocation.run(consumers, pub.now + 0.6)
    assert consumer.quality_paused
    run(pub, allocation, consumers, 5.0)
    assert not consumer.quality_paused and events == [True, False]
    assert consumer.current_layer == 2


def test_preferences_cap_the_layer_and_the_frame_rate() -> None:
    pub, consumer, sub, allocation, consumers, _ = setup()
    limit(sub, 5_000_000, pub.now)
    consumer.set_preferences(640, 360, None)
    run(pub, allocation, consumers, 2.5)
    assert consumer.wanted_layer == (1, None)
    consumer.set_preferences(None, None, 15)
    run(pub, allocation, consumers, 1.0)
    assert consumer.wanted_layer == (2, 1)
    consumer.set_preferences(320, 240, 8)
    run(pub, allocation, consumers, 1.0)
    assert consumer.wanted_layer == (0, 0)


def test_a_layer_set_by_hand_is_left_alone() -> None:
    pub, consumer, sub, allocation, consumers, _ = setup()
    limit(sub, 5_000_000, pub.now)
    consumer.allocated = False
    consumer.set_layer(0)
    run(pub, allocation, consumers, 2.0)
    assert consumer.wanted_layer == (0, None)


def test_held_back_layers_make_the_transport_pad_on_rtx() -> None:
    pub, consumer, sub, allocation, consumers, _ = setup()
    limit(sub, 700_000, pub.now)
    run(pub, allocation, consumers, 4.0)
    assert consumer.wanted_layer == (1, None)
    assert allocation.padding_bitrate > 0 and consumer.padding_bytes > 0
    padding = [p for p in sub.rtp if parse_rtp_header(p).ssrc == consumer.rtx_ssrc]
    assert padding
    for packet in padding:
        header = parse_rtp_header(packet)
        assert packet[0] & 0x20 and header.payload_type == 121 and packet[-1] == 255
        assert len(packet) - header.payload_offset == 255
    # Padding stays within the share of the estimate left over by the media.
    assert allocation.padding_bitrate <= 700_000
    # Nothing held back: no padding.
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 5.0)
    assert allocation.padding_bitrate == 0


def test_budget_of_a_remb_only_subscriber() -> None:
    from salon.media.rtcp import ReportBlock

    _, _, sub, allocation, _, _ = setup()

    def report(loss: float, now: float) -> None:
        sub.bandwidth.on_report_block(ReportBlock(1, int(loss * 256), 0, 0, 0, 0, 0), now)

    sub.bandwidth.on_remb(300_000, 1.0)
    assert allocation.budget(1.0) == 300_000
    # What was sent (media and padding) got through without loss: the budget follows it.
    allocation._sent_rate = 600_000
    report(0.0, 1.5)
    assert 600_000 <= allocation.budget(1.5) <= 600_000 * 1.08**0.5 + 1
    # A pessimistic REMB does not lower it; without a new report it holds.
    sub.bandwidth.on_remb(200_000, 2.0)
    assert allocation.budget(2.0) == allocation.budget(2.0) >= 600_000
    # Heavy loss while probing: cut by half the loss (76/256 as reported); the probes back off.
    grown = allocation.budget(2.0)
    allocation.padding_bitrate = 100_000
    report(0.3, 2.5)
    cut = allocation.budget(2.5)
    assert cut == int(grown * (1 - 76 / 256 / 2))
    assert allocation._probe_wait > 2.0
    # Nor does a REMB above it lift it (aiortc's stays high after a drop).
    sub.bandwidth.on_remb(2_000_000, 3.0)
    assert allocation.budget(3.0) == cut


def test_resuming_from_a_quality_pause_waits_for_a_key_frame() -> None:
    pub, consumer, sub, allocation, consumers, _ = setup()
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 2.0)
    consumer.set_paused(True, PauseReason.QUALITY)
    pub.send_frame()
    consumer.set_paused(False, PauseReason.QUALITY)
    sent = len(sub.rtp)
    pub.send_frame()  # no key frame: nothing forwarded
    assert len(sub.rtp) == sent
    pub.send_frame(keys=(2,))
    assert len(sub.rtp) > sent


@pytest.mark.parametrize("screen", [True, False])
def test_a_screen_share_is_served_before_the_active_speakers_camera(screen: bool) -> None:
    """Two simulcast streams to one subscriber whose link carries one top layer and a little:
    the one marked a screen share (the stream's videoType, passed down to its producer) gets
    the top layer, even over the active speaker's camera; unmarked, the camera would."""
    camera, share = Simulcast(), Simulcast()
    camera.producer.stream_id = "camera"
    share.producer.stream_id = "share"
    share.producer.screen = screen
    camera_consumer, sub = add_consumer(camera.producer, 9000)
    share_consumer, _ = add_consumer(share.producer, 9100, sub=sub)
    allocation = TransportAllocation(sub.bandwidth)
    sub.allocation = allocation
    allocation.active_speaker = "camera"
    consumers = {camera_consumer.id: camera_consumer, share_consumer.id: share_consumer}
    limit(sub, 2_100_000, camera.now)
    end = camera.now + 4.0
    while camera.now < end:
        keys = (0, 1, 2) if camera.frame % 30 == 0 else ()
        camera.send_frame(keys)
        share.send_frame(keys)
        allocation.run(consumers, camera.now)
    kinds = {i.consumer_id: i.kind.value for i in allocation.inputs(consumers.values(), camera.now)}
    assert kinds[share_consumer.id] == ("screen" if screen else "video")
    assert kinds[camera_consumer.id] == "video"
    first, second = (share_consumer, camera_consumer) if screen else (camera_consumer, share_consumer)
    assert first.wanted_layer[0] == 2 and first.current_layer == 2
    assert second.wanted_layer[0] is not None and second.wanted_layer[0] < 2


def test_remb_only_loss_is_counted_over_every_stream_not_the_worst_block() -> None:
    """Receiver reports on audio (50 packets a second) and a low video layer (12 a second):
    2 of the video's 12 packets lost is a fraction of 17% in its block, but 2 of 62 packets
    (3%) on the link: the budget holds instead of being cut."""
    from salon.media.rtcp import ReportBlock

    _, _, sub, allocation, _, _ = setup()
    sub.bandwidth.on_remb(300_000, 1.0)
    allocation._sent_rate = 250_000
    for ssrc in (1, 2):  # first blocks: nothing lost yet
        sub.bandwidth.on_report_block(ReportBlock(ssrc, 0, 0, 1000, 0, 0, 0), 1.0)
    assert allocation.budget(1.0) >= 300_000
    budget = allocation.budget(1.5)
    sub.bandwidth.on_report_block(ReportBlock(1, 0, 0, 1050, 0, 0, 0), 2.0)
    sub.bandwidth.on_report_block(ReportBlock(2, int(2 / 12 * 256), 2, 1012, 0, 0, 0), 2.0)
    assert sub.bandwidth.recent_loss == 2 / 62
    assert allocation.budget(2.0) == budget  # 2-10%: holds
    # Heavy loss on the link is still a cut.
    sub.bandwidth.on_report_block(ReportBlock(1, 40, 10, 1100, 0, 0, 0), 3.0)
    sub.bandwidth.on_report_block(ReportBlock(2, 100, 7, 1024, 0, 0, 0), 3.0)
    assert sub.bandwidth.recent_loss == 15 / 62
    assert allocation.budget(3.0) < budget


def test_a_collapsed_link_cuts_the_remb_only_budget_to_what_got_through() -> None:
    from salon.media.rtcp import ReportBlock

    _, _, sub, allocation, _, _ = setup()

    def report(loss: float, now: float) -> None:
        sub.bandwidth.on_report_block(ReportBlock(1, int(loss * 256), 0, 0, 0, 0, 0), now)

    sub.bandwidth.on_remb(3_000_000, 1.0)
    allocation._sent_rate = 2_500_000
    for i in range(6):  # seconds of clean sending at 2.5 Mb/s
        report(0.0, 1.0 + i)
        allocation.budget(1.0 + i)
    # The link drops to 500 kb/s: 80% of what is sent is lost. The budget goes to 90% of what
    # got through (no floor from the clean seconds before), at most a quarter off per report,
    # and no probe back-off: nothing was probing.
    grown = allocation.budget(7.0)
    report(0.8, 7.5)
    budget = allocation.budget(7.5)
    loss = int(0.8 * 256) / 256
    assert budget == int(max(grown / 4, 0.9 * 2_500_000 * (1 - loss)))
    report(0.8, 8.5)
    assert allocation.budget(8.5) == int(0.9 * 2_500_000 * (1 - loss)) < 500_000
    assert allocation._probe_wait == PROBE_STABLE_FOR
    # Moderate loss keeps the old rule: half the loss off, floored at 70% of the clean rate.
    _, _, sub, allocation, _, _ = setup()
    sub.bandwidth.on_remb(1_000_000, 1.0)
    allocation._sent_rate = 1_000_000
    report(0.0, 1.0)
    before = allocation.budget(1.0)
    report(0.2, 1.5)
    assert allocation.budget(1.5) == int(max(0.7 * 1_000_000, before * (1 - int(0.2 * 256) / 256 / 2)))


def test_a_collapse_cuts_the_old_layer_a_mild_drop_does_not() -> None:
    pub, consumer, sub, allocation, consumers, _ = setup()
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 2.5)
    assert consumer.current_layer == 2
    switcher = consumer._switcher
    assert switcher is not None
    # A little under the top layer (about 1.5 Mb/s): down to the middle one, but the top
    # keeps flowing until the middle one's key frame (no gap for a small overshoot).
    limit(sub, 1_300_000, pub.now)
    allocation.run(consumers, pub.now + 0.5)
    assert consumer.wanted_layer == (1, None) and not switcher.cutting
    pub.send_frame()
    assert consumer.current_layer == 2
    while pub.frame % 30:
        pub.send_frame()
    pub.send_frame(keys=(1,))
    assert consumer.current_layer == 1 and switcher.cuts == 0
    # Back on the top, then the link collapses to 300 kb/s: the top layer stops at the end of
    # its frame, nothing is sent until the lower layer's key frame, and the subscriber's NACKs
    # of the cut layer are not answered.
    limit(sub, 5_000_000, pub.now)
    run(pub, allocation, consumers, 6.0)
    assert consumer.current_layer == 2
    limit(sub, 300_000, pub.now)
    allocation.run(consumers, pub.now + 0.5)
    target = consumer.wanted_layer[0]
    assert target is not None and target < 2 and switcher.cutting
    last = parse_rtp_header(
        next(p for p in reversed(sub.rtp) if parse_rtp_header(p).ssrc == consumer.ssrc)
    ).sequence_number
    sent = len(sub.rtp)
    pub.send_frame()
    pub.send_frame()
    assert consumer.current_layer is None and switcher.cuts == 1
    assert not [p for p in sub.rtp[sent:] if parse_rtp_header(p).ssrc == consumer.ssrc]
    consumer.receive_nack([last], pub.now)
    assert len(sub.rtp) == sent
    pub.send_frame(keys=(target,))
    media = [parse_rtp_header(p) for p in sub.rtp[sent:] if parse_rtp_header(p).ssrc == consumer.ssrc]
    assert consumer.current_layer == target and media
    assert media[0].sequence_number == (last + 1 + CUT_SEQUENCE_GAP) & 0xFFFF
    # The subscriber's report that goes past the unused numbers counts them as lost (an
    # RFC 3550 receiver cannot tell them from loss): the bandwidth takes them out, only the
    # 3 packets really lost remain, and the estimator's fraction is the corrected one too.
    from salon.media.rtcp import ReportBlock

    for _ in range(10):
        pub.send_frame()
    received = parse_rtp_header(
        next(p for p in reversed(sub.rtp) if parse_rtp_header(p).ssrc == consumer.ssrc)
    ).sequence_number
    expected = (received - last) & 0xFFFF
    assert expected > CUT_SEQUENCE_GAP + 10

    def report(lost: int, highest: int) -> float | None:
        sub.bandwidth.recent_loss = None
        sub.bandwidth.on_report_block(ReportBlock(consumer.ssrc, 0, lost, highest, 0, 0, 0), pub.now)
        return sub.bandwidth.recent_loss

    assert report(10, last) is not None
    assert report(10 + CUT_SEQUENCE_GAP + 3, last + expected) == pytest.approx(
        3 / (expected - CUT_SEQUENCE_GAP)
    )
    assert sub.bandwidth.estimator.last_loss_fraction == pytest.approx(3 / (expected - CUT_SEQUENCE_GAP))
    # A later report is taken as it is.
    assert report(10 + CUT_SEQUENCE_GAP + 3 + 50, last + expected + 100) == pytest.approx(50 / 100)


def shaped_run(
    capacity: list[tuple[float, int]], seconds: float
) -> list[tuple[float, int | None, int | None]]:
    """A REMB-only subscriber (aiortc: a stale-high REMB, loss in a receiver report every
    second) behind a link of ``capacity`` ((from time, bit/s), ...): each report carries the
    share of what was sent that the link could not carry. Returns (time, wanted, current
    layer) after each report."""
    from salon.media.rtcp import ReportBlock

    pub, consumer, sub, allocation, consumers, _ = setup()
    sub.bandwidth.on_remb(5_000_000, pub.now)
    out: list[tuple[float, int | None, int | None]] = []
    start = pub.now
    next_report = start + 1.0
    end = start + seconds
    while pub.now < end:
        keys = (0, 1, 2) if pub.frame % 30 == 0 else ()
        pub.send_frame(keys)
        allocation.run(consumers, pub.now)
        if pub.now >= next_report:
            next_report += 1.0
            link = next(rate for at, rate in reversed(capacity) if pub.now - start >= at)
            sent = allocation._sent_rate
            loss = max(0.0, 1 - link / sent) if sent else 0.0
            sub.bandwidth.on_remb(5_000_000, pub.now)
            sub.bandwidth.on_report_block(ReportBlock(1, min(255, int(loss * 256)), 0, 0, 0, 0, 0), pub.now)
            out.append((pub.now - start, consumer.wanted_layer[0], consumer.current_layer))
    return out


def test_a_remb_only_subscriber_falls_at_once_and_climbs_back_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import salon.media.allocation as allocation_module

    def back_to_top(trace: list[tuple[float, int | None, int | None]], lifted: float) -> float:
        after = [(t, current) for t, _, current in trace if t >= lifted]
        return next(t for t, current in after if current == 2) - lifted

    # Unlimited for 8 s, 300 kb/s for 12 s, unlimited again.
    capacity = [(0.0, 10_000_000), (8.0, 300_000), (20.0, 10_000_000)]
    trace = shaped_run(capacity, 40.0)
    assert any(current == 2 for t, _, current in trace if t < 8.0)
    # Within two reports of the drop, the allocation is down to what the link carries.
    limited = [(t, wanted) for t, wanted, _ in trace if 10.5 <= t < 20.0]
    assert limited and all(wanted == 0 for _, wanted in limited), trace
    fast = back_to_top(trace, 20.0)
    assert fast < 10.0, trace
    # Probes that grow after each success climb faster than fixed 1.25x steps.
    monkeypatch.setattr(allocation_module, "MAX_PROBE_FACTOR", allocation_module.PROBE_FACTOR)
    slow = back_to_top(shaped_run(capacity, 40.0), 20.0)
    assert fast < slow


def test_a_video_paused_for_quality_still_pads() -> None:
    """Paused for quality (the lowest layer does not fit), the video's RTX stream still carries
    the padding that lets the subscriber's estimate grow back; paused by the subscriber, not."""
    from salon.media.consumer import PauseReason

    pub, consumer, sub, allocation, consumers, _ = setup()
    limit(sub, 700_000, pub.now)
    run(pub, allocation, consumers, 4.0)
    consumer.set_paused(True, PauseReason.QUALITY)
    assert consumer.quality_paused and not consumer.forwarding
    assert consumer.send_padding(pub.now, 3) > 0
    consumer.set_paused(False, PauseReason.QUALITY)
    consumer.set_paused(True, PauseReason.SUBSCRIBER)
    assert consumer.send_padding(pub.now, 3) == 0
