"""Audio levels and active-speaker detection from the ssrc-audio-level header extension.

Publishers put the level of each audio packet in an RTP header extension (RFC 6464): a voice
activity flag and the level in -dBov, 0 (full scale) to 127 (silence). The SFU reads it per
packet without decoding audio (:func:`salon.media.rtp.parse_audio_level`) and feeds
:class:`ActiveSpeakerDetector`, which every ``interval`` (0.25 s):

1. smooths each stream's levels over the window: each -dBov value is converted to a linear
   amplitude ``10 ** (-level / 20)`` (0..1) and averaged; a stream that sent no packets in
   the window (muted, or Opus DTX) has level 0;
2. reports an :class:`AudioLevelUpdate` for each stream whose smoothed level changed by at
   least ``min_change`` since it was last reported (OpenTok's ``audioLevel`` is this 0..1
   number);
3. picks the loudest stream whose level is at or above ``threshold_dbov`` as the candidate,
   and makes it the active speaker (:class:`ActiveSpeakerChanged`) once it has stayed the
   candidate for ``hysteresis`` seconds after the first window it won (so with the defaults
   it must win windows spanning 0.5-0.75 s), so a cough does not steal the floor. A window in
   which nobody is above the threshold does not end a candidacy unless the silence lasts
   ``pause`` seconds: speech has short pauses between words. Another stream winning a window
   does. Silence keeps the current speaker; removing its stream clears it.

The voice-activity flag is ignored by default because not every sender sets it (aiortc always
sends 0); with ``require_voice=True`` packets without it count as silence.

Sans-I/O, in the style of mediasoup's ``ActiveSpeakerObserver`` / ``AudioLevelObserver``: the
caller passes ``now`` (seconds, monotonic) and calls :meth:`ActiveSpeakerDetector.poll` at
:meth:`ActiveSpeakerDetector.next_deadline`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "ActiveSpeakerChanged",
    "ActiveSpeakerDetector",
    "AudioLevelEvent",
    "AudioLevelUpdate",
    "HeldLevelElection",
    "SpeakerElection",
]

# Linear amplitude of each -dBov value (0..127); 127 is "silence" and maps to 0.
_LINEAR = (*(10.0 ** (-level / 20.0) for level in range(127)), 0.0)


@dataclass(frozen=True, slots=True)
class AudioLevelUpdate:
    """A stream's smoothed audio level changed."""

    stream_id: str
    level: float
    """Mean linear amplitude over the last interval, 0 (silence) to 1 (full scale)."""


@dataclass(frozen=True, slots=True)
class ActiveSpeakerChanged:
    """The active speaker changed."""

    stream_id: str | None
    """The new active speaker's stream, or None when the speaker's stream went away."""
    previous: str | None
    """The previous active speaker's stream, or None if there was none."""


AudioLevelEvent = AudioLevelUpdate | ActiveSpeakerChanged
"""Anything :meth:`ActiveSpeakerDetector.poll` returns."""


class SpeakerElection:
    """The choice of the active speaker from one smoothed level per stream and window (step 3
    of the module docstring), shared by :class:`ActiveSpeakerDetector` (levels measured from
    packets) and :class:`HeldLevelElection` (levels reported by other nodes of a cluster).

    :meth:`decide` is called once per window, ``interval`` seconds apart."""

    __slots__ = (
        "_candidate",
        "_candidate_since",
        "_candidate_won",
        "_hysteresis",
        "_interval",
        "_pause",
        "_speaker",
        "_threshold",
    )

    def __init__(
        self,
        *,
        interval: float = 0.25,
        threshold_dbov: float = -50.0,
        hysteresis: float = 0.5,
        pause: float = 0.5,
    ):
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        if not -127.0 <= threshold_dbov <= 0.0:
            raise ValueError(f"threshold_dbov must be -127..0, got {threshold_dbov}")
        self._interval = interval
        self._threshold = 10.0 ** (threshold_dbov / 20.0)
        self._hysteresis = hysteresis
        self._pause = pause
        self._speaker: str | None = None
        self._candidate: str | None = None
        self._candidate_since = 0.0
        self._candidate_won = 0.0

    @property
    def active_speaker(self) -> str | None:
        return self._speaker

    def adopt(self, stream_id: str | None) -> None:
        """Take ``stream_id`` as the current speaker (chosen elsewhere: by the node that
        announces a cluster session's speaker) without reporting it."""
        self._speaker = stream_id

    def remove_stream(self, stream_id: str) -> ActiveSpeakerChanged | None:
        """Forget a stream; if it was the speaker, the speaker becomes None (returned)."""
        if self._candidate == stream_id:
            self._candidate = None
        if self._speaker == stream_id:
            self._speaker = None
            return ActiveSpeakerChanged(None, stream_id)
        return None

    def decide(self, levels: Iterable[tuple[str, float]], now: float) -> ActiveSpeakerChanged | None:
        """One window's levels (stream ID, 0..1 linear, in a stable order: the first of two
        equal levels wins); the speaker change it makes, if any."""
        loudest: str | None = None
        loudest_level = -1.0
        threshold = self._threshold
        for stream_id, level in levels:
            if level >= threshold and level > loudest_level:
                loudest, loudest_level = stream_id, level
        if loudest is not None:
            # A pause between words (silent windows shorter than ``pause``) keeps a candidacy;
            # another stream winning, or a longer silence, starts a new one. Counted from the
            # end of the first window it won, which may have been a partial burst: a stream
            # must win windows spanning more than the hysteresis.
            silence = now - self._candidate_won - self._interval
            if loudest != self._candidate or silence >= self._pause - 1e-9:
                self._candidate = loudest
                self._candidate_since = now
            self._candidate_won = now
        elif self._candidate is not None and now - self._candidate_won >= self._pause - 1e-9:
            self._candidate = None
        candidate = self._candidate
        if (
            candidate is not None
            and candidate == loudest  # promoted only in a window it won, never in a silence
            and candidate != self._speaker
            and now - self._candidate_since >= self._hysteresis
        ):
            change = ActiveSpeakerChanged(candidate, self._speaker)
            self._speaker = candidate
            return change
        return None


class _Stream:
    __slots__ = ("count", "reported", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.reported = -1.0


class _WindowedElection:
    """What :class:`ActiveSpeakerDetector` and :class:`HeldLevelElection` share: a
    :class:`SpeakerElection` (which checks the arguments) deciding once per window, windows
    ``interval`` seconds apart from the first input on (sans-I/O: the caller passes ``now``)."""

    __slots__ = ("_election", "_interval", "_next_poll")

    def __init__(self, *, interval: float, threshold_dbov: float, hysteresis: float, pause: float):
        self._election = SpeakerElection(
            interval=interval, threshold_dbov=threshold_dbov, hysteresis=hysteresis, pause=pause
        )
        self._interval = interval
        self._next_poll: float | None = None

    @property
    def active_speaker(self) -> str | None:
        """The current active speaker's stream id."""
        return self._election.active_speaker

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next produces results; None before the first input."""
        return self._next_poll

    def _start(self, now: float) -> None:
        """The first input starts the first window."""
        if self._next_poll is None:
            self._next_poll = now + self._interval

    def _window_ends(self, now: float) -> bool:
        """Whether a window ends at ``now`` (the next one then starts)."""
        if self._next_poll is None or now < self._next_poll:
            return False
        self._next_poll = now + self._interval
        return True


class ActiveSpeakerDetector(_WindowedElection):
    """Smooth per-stream audio levels and choose the active speaker.

    :param interval: seconds between two polls that produce results (default 0.25).
    :param threshold_dbov: minimum smoothed level, in dBov (-127..0), for a stream to become
        the active speaker (default -50).
    :param hysteresis: seconds a stream must stay the loudest above the threshold before it
        becomes the active speaker (default 0.5).
    :param min_change: smallest change of a stream's level worth an update (default 0.01).
    :param require_voice: count packets without the voice-activity flag as silence.
    :param pause: seconds of silence (no stream above the threshold) a candidate survives
        (default 0.5): the pauses between words do not restart its hysteresis.
    """

    __slots__ = ("_min_change", "_require_voice", "_streams")

    def __init__(
        self,
        *,
        interval: float = 0.25,
        threshold_dbov: float = -50.0,
        hysteresis: float = 0.5,
        min_change: float = 0.01,
        require_voice: bool = False,
        pause: float = 0.5,
    ):
        super().__init__(interval=interval, threshold_dbov=threshold_dbov, hysteresis=hysteresis, pause=pause)
        self._min_change = min_change
        self._require_voice = require_voice
        self._streams: dict[str, _Stream] = {}

    def add_stream(self, stream_id: str) -> None:
        """Start tracking a stream (it is also added by its first :meth:`feed`)."""
        if stream_id not in self._streams:
            self._streams[stream_id] = _Stream()

    def remove_stream(self, stream_id: str) -> ActiveSpeakerChanged | None:
        """Stop tracking a stream. If it was the active speaker, the speaker becomes None and
        the change is returned (report it like a :meth:`poll` result)."""
        self._streams.pop(stream_id, None)
        return self._election.remove_stream(stream_id)

    def feed(self, stream_id: str, level_dbov: int, voice: bool, now: float) -> None:
        """Account one audio packet: its level in -dBov (0..127, as in the extension) and flag."""
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream()
        self._start(now)
        if voice or not self._require_voice:
            stream.total += _LINEAR[min(max(level_dbov, 0), 127)]
        stream.count += 1

    def poll(self, now: float) -> list[AudioLevelEvent]:
        """Close the current window if ``interval`` has passed and report what changed: level
        updates (in the order streams were added) then, if any, the speaker change."""
        if not self._window_ends(now):
            return []
        events: list[AudioLevelEvent] = []
        window: list[tuple[str, float]] = []
        for stream_id, stream in self._streams.items():
            level = stream.total / stream.count if stream.count else 0.0
            stream.total = 0.0
            stream.count = 0
            if abs(level - stream.reported) >= self._min_change or (level == 0.0 and stream.reported != 0.0):
                stream.reported = level
                events.append(AudioLevelUpdate(stream_id, level))
            window.append((stream_id, level))
        change = self._election.decide(window, now)
        if change is not None:
            events.append(change)
        return events


class HeldLevelElection(_WindowedElection):
    """The active speaker of a session whose levels come from elsewhere: the
    :class:`AudioLevelUpdate` of each stream as measured where it is published (only the levels
    that changed, a few times a second), in a cluster the audio levels every node publishes on
    the session's bus. A stream keeps its last reported level until the next report (a stream
    that falls silent is reported once at 0); every ``interval`` (:meth:`poll`) the held levels
    make one window of a :class:`SpeakerElection`.

    Sans-I/O like :class:`ActiveSpeakerDetector`: the caller passes ``now``."""

    __slots__ = ("_levels",)

    def __init__(
        self,
        *,
        interval: float = 0.25,
        threshold_dbov: float = -50.0,
        hysteresis: float = 0.5,
        pause: float = 0.5,
    ):
        super().__init__(interval=interval, threshold_dbov=threshold_dbov, hysteresis=hysteresis, pause=pause)
        self._levels: dict[str, float] = {}

    def report(self, levels: Mapping[str, float], now: float) -> None:
        """Levels (0..1) reported for some streams; the others keep theirs."""
        self._levels.update(levels)
        self._start(now)

    def adopt(self, stream_id: str | None) -> None:
        """The speaker as announced (see :meth:`SpeakerElection.adopt`)."""
        self._election.adopt(stream_id)

    def poll(self, now: float, streams: Callable[[str], bool]) -> ActiveSpeakerChanged | None:
        """One window if ``interval`` has passed: the streams ``streams`` no longer accepts are
        forgotten first (a speaker whose stream went away becomes None)."""
        if not self._window_ends(now):
            return None
        change: ActiveSpeakerChanged | None = None
        for stream_id in [s for s in self._levels if not streams(s)]:
            del self._levels[stream_id]
            change = self._election.remove_stream(stream_id) or change
        if self._election.active_speaker is not None and not streams(self._election.active_speaker):
            change = self._election.remove_stream(self._election.active_speaker) or change
        if change is not None:
            return change
        return self._election.decide(sorted(self._levels.items()), now)
