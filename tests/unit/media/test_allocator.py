"""The per-subscriber allocator: priorities, preferences, pausing for quality and hysteresis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from salon.media.allocator import (
    AUDIO_DEFAULT_BITRATE,
    Allocator,
    ConsumerDecision,
    ConsumerInput,
    Layer,
    MediaKindClass,
    Preferences,
)

AUDIO = MediaKindClass.AUDIO
VIDEO = MediaKindClass.VIDEO
SCREEN = MediaKindClass.SCREEN


def camera(scale: float = 1.0) -> tuple[Layer, ...]:
    """Chromium-like three simulcast layers with two temporal layers each (cumulative rates)."""
    return (
        Layer(0, 0, int(100_000 * scale), 320, 180, 15),
        Layer(0, 1, int(150_000 * scale), 320, 180, 30),
        Layer(1, 0, int(350_000 * scale), 640, 360, 15),
        Layer(1, 1, int(500_000 * scale), 640, 360, 30),
        Layer(2, 0, int(1_000_000 * scale), 1280, 720, 15),
        Layer(2, 1, int(1_500_000 * scale), 1280, 720, 30),
    )


def layer_of(decision: ConsumerDecision) -> tuple[int | None, int | None]:
    return decision.spatial, decision.temporal


def test_unlimited_gives_everyone_the_top_layer() -> None:
    allocation = Allocator().allocate(
        20_000_000,
        [
            ConsumerInput("a1", AUDIO, (Layer(0, 0, 32_000),)),
            ConsumerInput("v1", VIDEO, camera()),
            ConsumerInput("v2", VIDEO, camera()),
        ],
        now=0.0,
    )
    assert layer_of(allocation.decisions["v1"]) == (2, 1)
    assert layer_of(allocation.decisions["v2"]) == (2, 1)
    assert allocation.decisions["a1"].bitrate == 32_000
    assert allocation.allocated == allocation.desired == 32_000 + 2 * 1_500_000
    assert set(allocation.changed) == {"a1", "v1", "v2"}


def test_audio_first_then_screen_then_speaker_then_others() -> None:
    consumers = [
        ConsumerInput("other", VIDEO, camera()),
        ConsumerInput("speaker", VIDEO, camera(), active_speaker=True),
        ConsumerInput(
            "screen", SCREEN, (Layer(0, 0, 300_000, 1920, 1080, 5), Layer(1, 0, 800_000, 1920, 1080, 15))
        ),
        ConsumerInput("audio", AUDIO),
    ]
    # 40k audio + 300k screen + 100k + 100k lowest layers = 540k; 1.15 M leaves 610k spare:
    # the screen takes its top layer first (+500k, 80k margin), then the speaker climbs
    # (+50k, 15k margin), 60k is left: not enough for the other's next step.
    allocation = Allocator().allocate(1_150_000, consumers, now=0.0)
    d = allocation.decisions
    assert d["audio"].bitrate == AUDIO_DEFAULT_BITRATE and not d["audio"].paused
    assert layer_of(d["screen"]) == (1, 0)
    assert layer_of(d["speaker"]) == (0, 1)
    assert layer_of(d["other"]) == (0, 0)
    assert allocation.allocated <= 1_150_000
    assert allocation.desired > allocation.allocated


def test_lowest_layer_not_fitting_pauses_with_reason_quality_audio_stays() -> None:
    consumers = [
        ConsumerInput("audio", AUDIO, (Layer(0, 0, 40_000),)),
        ConsumerInput("speaker", VIDEO, camera(), active_speaker=True),
        ConsumerInput("other", VIDEO, camera()),
    ]
    allocation = Allocator().allocate(180_000, consumers, now=0.0)
    d = allocation.decisions
    assert layer_of(d["speaker"]) == (0, 0)
    assert d["other"] == ConsumerDecision("other", None, None, 0, paused=True, reason="quality")
    assert not d["audio"].paused
    assert allocation.paused == ("other",)
    # Even the speaker does not fit: both paused, audio still on.
    allocation = Allocator().allocate(60_000, consumers, now=0.0)
    assert allocation.decisions["speaker"].paused and allocation.decisions["other"].paused
    assert allocation.decisions["audio"].bitrate == 40_000


def test_pause_resume_hysteresis_does_not_flap() -> None:
    allocator = Allocator(resume_margin=0.2, resume_hold=2.0)
    consumers = [ConsumerInput("v", VIDEO, camera())]
    assert allocator.allocate(90_000, consumers, now=0.0).paused == ("v",)
    # Estimate wobbles just above the lowest layer: not enough margin, stays paused.
    for i, estimate in enumerate([101_000, 110_000, 115_000, 105_000]):
        allocation = allocator.allocate(estimate, consumers, now=3.0 + i)
        assert allocation.decisions["v"].paused, estimate
        assert allocation.changed == ()
    # Enough margin but within the hold time after a pause: still paused.
    allocator2 = Allocator(resume_margin=0.2, resume_hold=2.0)
    allocator2.allocate(90_000, consumers, now=10.0)
    assert allocator2.allocate(500_000, consumers, now=11.0).decisions["v"].paused
    resumed = allocator2.allocate(500_000, consumers, now=12.5)
    assert resumed.resumed == ("v",) and layer_of(resumed.decisions["v"]) == (1, 0)
    # Once forwarding, the lowest layer is kept without margin.
    assert not allocator2.allocate(100_000, consumers, now=13.0).decisions["v"].paused


def test_upgrade_needs_margin_keeping_does_not() -> None:
    allocator = Allocator(upgrade_margin=0.1)
    consumers = [ConsumerInput("v", VIDEO, camera())]
    # 500k exactly: (1,1) costs 500k; from nothing, upgrade margin blocks it.
    assert layer_of(allocator.allocate(500_000, consumers, now=0.0).decisions["v"]) == (1, 0)
    assert layer_of(allocator.allocate(560_000, consumers, now=1.0).decisions["v"]) == (1, 1)
    # Back at exactly 500k: keeps (1, 1), no margin to stay.
    allocation = allocator.allocate(500_000, consumers, now=2.0)
    assert layer_of(allocation.decisions["v"]) == (1, 1) and allocation.changed == ()
    assert layer_of(allocator.allocate(400_000, consumers, now=3.0).decisions["v"]) == (1, 0)


def test_preferences_cap_resolution_and_frame_rate() -> None:
    consumers = [
        ConsumerInput("small", VIDEO, camera(), preferences=Preferences(max_width=640, max_height=360)),
        ConsumerInput("slow", VIDEO, camera(), preferences=Preferences(max_frame_rate=15)),
        ConsumerInput("tiny", VIDEO, camera(), preferences=Preferences(max_width=100)),
    ]
    d = Allocator().allocate(50_000_000, consumers, now=0.0).decisions
    assert layer_of(d["small"]) == (1, 1)
    assert layer_of(d["slow"]) == (2, 0)
    assert layer_of(d["tiny"]) == (0, 0)  # nothing satisfies it: the lowest layer


def test_inactive_layers_are_skipped_and_no_layers_means_paused() -> None:
    layers = (Layer(0, 0, 100_000), Layer(1, 0, 0), Layer(2, 0, 900_000))  # middle layer stopped
    d = (
        Allocator()
        .allocate(600_000, [ConsumerInput("v", VIDEO, layers), ConsumerInput("none", VIDEO, ())], now=0.0)
        .decisions
    )
    assert layer_of(d["v"]) == (0, 0)
    assert d["none"].paused


def test_closed_consumers_are_forgotten() -> None:
    allocator = Allocator()
    allocator.allocate(90_000, [ConsumerInput("v", VIDEO, camera())], now=0.0)
    # "v" closed and a new consumer with the same id appears much later: treated as new.
    allocator.allocate(90_000, [], now=1.0)
    allocation = allocator.allocate(120_000, [ConsumerInput("v", VIDEO, camera())], now=1.5)
    assert not allocation.decisions["v"].paused and allocation.resumed == ()


@settings(max_examples=200, deadline=None)
@given(
    estimate=st.integers(0, 10_000_000),
    kinds=st.lists(st.sampled_from([AUDIO, VIDEO, SCREEN]), min_size=1, max_size=12),
    speaker=st.integers(0, 11),
    scale=st.floats(0.2, 3.0),
)
def test_allocation_fits_the_estimate_and_respects_priorities(
    estimate: int, kinds: list[MediaKindClass], speaker: int, scale: float
) -> None:
    consumers = [
        ConsumerInput(
            f"c{i:02d}", kind, camera(scale) if kind is not AUDIO else (), active_speaker=i == speaker
        )
        for i, kind in enumerate(kinds)
    ]
    allocation = Allocator().allocate(estimate, consumers, now=0.0)
    d = allocation.decisions
    audio = sum(d[c.consumer_id].bitrate for c in consumers if c.kind is AUDIO)
    video = allocation.allocated - audio
    assert video <= max(0, estimate - audio)
    assert allocation.allocated <= allocation.desired
    # A paused video never has a lower priority than a forwarding one.
    order = {"screen": 0, "speaker": 1, "other": 2}

    def klass(c: ConsumerInput) -> int:
        return order["screen" if c.kind is SCREEN else "speaker" if c.active_speaker else "other"]

    videos = [c for c in consumers if c.kind is not AUDIO]
    for p in videos:
        for f in videos:
            if d[p.consumer_id].paused and not d[f.consumer_id].paused:
                assert klass(p) >= klass(f), (p, f)
                assert (klass(p), p.consumer_id) > (klass(f), f.consumer_id)
    assert all(not d[c.consumer_id].paused for c in consumers if c.kind is AUDIO)


def test_a_failed_resume_doubles_the_wait_before_the_next() -> None:
    """Paused again soon after a resume (the link could not carry it): each retry waits twice
    as long, up to max_resume_hold; a resume that lasts starts the waits over."""
    allocator = Allocator(resume_margin=0.2, resume_hold=2.0, max_resume_hold=8.0, resume_trial=5.0)
    consumers = [ConsumerInput("v", VIDEO, camera())]
    now = 0.0
    assert allocator.allocate(90_000, consumers, now=now).paused == ("v",)
    waits = []
    for _ in range(4):
        paused_at = now
        while allocator.allocate(500_000, consumers, now=now).decisions["v"].paused:
            now += 0.5
        waits.append(now - paused_at)
        now += 1.0  # the resume fails a second later
        assert allocator.allocate(90_000, consumers, now=now).paused == ("v",)
    assert waits == [2.0, 4.0, 8.0, 8.0]
    # A resume that holds past resume_trial: the next pause waits resume_hold again.
    paused_at = now
    while allocator.allocate(500_000, consumers, now=now).decisions["v"].paused:
        now += 0.5
    now += 6.0
    assert allocator.allocate(90_000, consumers, now=now).paused == ("v",)
    paused_at = now
    while allocator.allocate(500_000, consumers, now=now).decisions["v"].paused:
        now += 0.5
    assert now - paused_at == 2.0
