from __future__ import annotations

import pytest

from salon.media.audio_level import (
    ActiveSpeakerChanged,
    ActiveSpeakerDetector,
    AudioLevelUpdate,
    HeldLevelElection,
)


def talk(
    detector: ActiveSpeakerDetector, levels: dict[str, int], start: float, end: float
) -> list[AudioLevelUpdate | ActiveSpeakerChanged]:
    """Feed 50 packets per second per stream at the given -dBov levels, polling after each
    round as the SFU's timer would; return what the polls reported."""
    events: list[AudioLevelUpdate | ActiveSpeakerChanged] = []
    step = 0
    while start + step * 0.02 < end - 1e-9:
        now = start + step * 0.02
        for stream_id, level in levels.items():
            detector.feed(stream_id, level, True, now)
        events += detector.poll(now)
        step += 1
    return events


def speakers(events: list[AudioLevelUpdate | ActiveSpeakerChanged]) -> list[ActiveSpeakerChanged]:
    return [e for e in events if isinstance(e, ActiveSpeakerChanged)]


def levels(events: list[AudioLevelUpdate | ActiveSpeakerChanged]) -> dict[str, float]:
    return {e.stream_id: e.level for e in events if isinstance(e, AudioLevelUpdate)}


def test_levels_are_the_mean_linear_amplitude_over_the_window() -> None:
    detector = ActiveSpeakerDetector(interval=0.25)
    detector.feed("a", 0, False, 0.0)  # full scale: 1.0
    detector.feed("a", 20, False, 0.1)  # -20 dBov: 0.1
    detector.feed("b", 127, False, 0.1)  # silence: 0.0
    assert levels(detector.poll(0.25)) == {"a": pytest.approx(0.55), "b": 0.0}


def test_nothing_is_reported_before_the_interval_has_passed() -> None:
    detector = ActiveSpeakerDetector(interval=0.25)
    assert detector.poll(0.0) == []
    assert detector.next_deadline() is None
    detector.feed("a", 10, True, 1.0)
    assert detector.next_deadline() == pytest.approx(1.25)
    assert detector.poll(1.2) == []
    assert levels(detector.poll(1.25)) == {"a": pytest.approx(10 ** (-0.5))}
    assert detector.next_deadline() == pytest.approx(1.5)


def test_a_loud_stream_becomes_the_active_speaker_after_the_hysteresis() -> None:
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.5, threshold_dbov=-50)
    assert speakers(talk(detector, {"a": 20, "b": 90}, 0.0, 0.5)) == []
    assert speakers(talk(detector, {"a": 20, "b": 90}, 0.5, 0.8)) == [ActiveSpeakerChanged("a", None)]
    assert detector.active_speaker == "a"
    assert speakers(talk(detector, {"a": 20, "b": 90}, 0.8, 3.0)) == []


def test_streams_below_the_threshold_never_become_the_speaker() -> None:
    detector = ActiveSpeakerDetector(threshold_dbov=-50)
    assert speakers(talk(detector, {"a": 60, "b": 70}, 0.0, 3.0)) == []
    assert detector.active_speaker is None


def test_a_short_burst_does_not_steal_the_floor() -> None:
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.5)
    talk(detector, {"a": 20}, 0.0, 1.0)
    assert detector.active_speaker == "a"
    events = talk(detector, {"a": 30, "b": 5}, 1.0, 1.3)  # b coughs for about one window
    events += talk(detector, {"a": 20, "b": 100}, 1.3, 3.0)
    assert speakers(events) == []
    assert detector.active_speaker == "a"


def test_the_floor_passes_to_a_stream_that_stays_loudest() -> None:
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.5)
    talk(detector, {"a": 20, "b": 80}, 0.0, 1.0)
    assert detector.active_speaker == "a"
    assert speakers(talk(detector, {"a": 80, "b": 20}, 1.0, 1.5)) == []
    assert speakers(talk(detector, {"a": 80, "b": 20}, 1.5, 2.0)) == [ActiveSpeakerChanged("b", "a")]


def test_pauses_between_words_do_not_restart_the_hysteresis() -> None:
    """Speech (or Chromium's fake beep) is on for a window, off for the next: it still wins."""
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.5, pause=0.5)
    events: list[AudioLevelUpdate | ActiveSpeakerChanged] = []
    for second in range(4):
        events += talk(detector, {"a": 20}, second * 0.5, second * 0.5 + 0.25)
        events += talk(detector, {"a": 127}, second * 0.5 + 0.25, second * 0.5 + 0.5)
    assert speakers(events) == [ActiveSpeakerChanged("a", None)]


def test_a_long_silence_ends_a_candidacy() -> None:
    """Short bursts a second apart are coughs, not a speaker: each silence longer than the
    pause starts the hysteresis again."""
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.5, pause=0.5)
    events: list[AudioLevelUpdate | ActiveSpeakerChanged] = []
    for second in range(4):
        events += talk(detector, {"a": 20}, second * 1.3, second * 1.3 + 0.1)
        events += talk(detector, {"a": 127}, second * 1.3 + 0.1, second * 1.3 + 1.3)
    assert speakers(events) == []


def test_silence_keeps_the_current_speaker() -> None:
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.5)
    talk(detector, {"a": 20, "b": 127}, 0.0, 1.0)
    assert detector.active_speaker == "a"
    assert speakers(talk(detector, {"a": 127, "b": 127}, 1.0, 3.0)) == []
    assert detector.active_speaker == "a"


def test_removing_the_speakers_stream_reports_the_change() -> None:
    detector = ActiveSpeakerDetector(interval=0.25, hysteresis=0.25)
    assert speakers(talk(detector, {"a": 20}, 0.0, 0.6)) == [ActiveSpeakerChanged("a", None)]
    assert detector.remove_stream("b") is None
    assert detector.remove_stream("a") == ActiveSpeakerChanged(None, "a")
    assert detector.active_speaker is None
    assert speakers(detector.poll(1.0)) == []


def test_updates_are_sent_only_when_a_level_changes() -> None:
    detector = ActiveSpeakerDetector(interval=0.25, min_change=0.01)
    first = [e for e in talk(detector, {"a": 20, "b": 40}, 0.0, 0.3) if isinstance(e, AudioLevelUpdate)]
    assert {e.stream_id for e in first} == {"a", "b"}
    later = [e for e in talk(detector, {"a": 20, "b": 30}, 0.3, 1.0) if isinstance(e, AudioLevelUpdate)]
    assert {e.stream_id for e in later} == {"b"}


def test_a_stream_that_goes_quiet_is_reported_at_zero_once() -> None:
    detector = ActiveSpeakerDetector(interval=0.25)
    detector.add_stream("muted")
    detector.feed("a", 20, True, 0.0)
    assert levels(detector.poll(0.25)) == {"a": pytest.approx(0.1), "muted": 0.0}
    detector.feed("x", 127, True, 0.3)
    assert levels(detector.poll(0.5)) == {"a": 0.0, "x": 0.0}
    assert levels(detector.poll(0.75)) == {}


def test_require_voice_counts_packets_without_the_flag_as_silence() -> None:
    detector = ActiveSpeakerDetector(require_voice=True)
    detector.feed("a", 0, False, 0.0)
    detector.feed("a", 0, True, 0.1)
    assert levels(detector.poll(0.25)) == {"a": pytest.approx(0.5)}


def test_out_of_range_levels_are_clamped() -> None:
    detector = ActiveSpeakerDetector()
    detector.feed("a", -5, False, 0.0)
    detector.feed("b", 300, False, 0.0)
    assert levels(detector.poll(0.25)) == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize("kwargs", [{"interval": 0.0}, {"threshold_dbov": 3.0}, {"threshold_dbov": -200.0}])
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ActiveSpeakerDetector(**kwargs)  # type: ignore[arg-type]


def held_windows(
    election: HeldLevelElection, start: float, end: float, streams: set[str] | None = None
) -> list[ActiveSpeakerChanged]:
    """Poll every 50 ms from ``start`` to ``end``, as the node's timer would."""
    changes: list[ActiveSpeakerChanged] = []
    step = 0
    while start + step * 0.05 < end - 1e-9:
        change = election.poll(start + step * 0.05, lambda s: streams is None or s in streams)
        if change is not None:
            changes.append(change)
        step += 1
    return changes


def test_a_held_level_reported_once_keeps_winning_until_the_next_report() -> None:
    election = HeldLevelElection(interval=0.25, hysteresis=0.5)
    assert election.next_deadline() is None
    election.report({"a": 0.2, "b": 0.0}, 0.0)  # reported once: the levels only change rarely
    assert held_windows(election, 0.0, 0.5) == []
    assert held_windows(election, 0.5, 0.8) == [ActiveSpeakerChanged("a", None)]
    election.report({"a": 0.0, "b": 0.2}, 1.0)  # the roles change
    assert held_windows(election, 0.8, 1.5) == []
    assert held_windows(election, 1.5, 2.0) == [ActiveSpeakerChanged("b", "a")]
    assert election.active_speaker == "b"


def test_held_levels_below_the_threshold_elect_nobody() -> None:
    election = HeldLevelElection(threshold_dbov=-50)
    election.report({"a": 10 ** (-60 / 20)}, 0.0)
    assert held_windows(election, 0.0, 3.0) == []


def test_equal_held_levels_elect_the_first_stream_by_id_whatever_the_report_order() -> None:
    for order in (["b", "a"], ["a", "b"]):
        election = HeldLevelElection()
        election.report(dict.fromkeys(order, 0.3), 0.0)
        assert held_windows(election, 0.0, 1.0) == [ActiveSpeakerChanged("a", None)], order


def test_a_held_speaker_whose_stream_is_gone_becomes_none_and_an_adopted_one_is_not_reported() -> None:
    election = HeldLevelElection()
    election.report({"a": 0.3, "b": 0.0}, 0.0)
    assert held_windows(election, 0.0, 1.0) == [ActiveSpeakerChanged("a", None)]
    assert held_windows(election, 1.0, 1.5, streams={"b"}) == [ActiveSpeakerChanged(None, "a")]
    # Announced elsewhere: taken as is, no change reported; the levels then decide again.
    election.adopt("b")
    assert election.active_speaker == "b"
    election.report({"c": 0.5}, 1.5)
    assert held_windows(election, 1.5, 3.0, streams={"b", "c"}) == [ActiveSpeakerChanged("c", "b")]
