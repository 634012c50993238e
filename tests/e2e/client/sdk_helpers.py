"""Helpers for the client SDK end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from salon.client import (
    AudioFrame,
    Event,
    Session,
    StreamReceived,
    Subscriber,
    VideoFrame,
    read_test_pattern_index,
)
from tests.conftest import RunningServer

LOOPBACK = ["127.0.0.1"]


def session_for(server: RunningServer, session_id: str, role: str = "publisher", **kwargs: object) -> Session:
    """A :class:`Session` to ``session_id`` gathering ICE on loopback only."""
    return Session(
        session_id, server.token(session_id, role=role), server.url, ice_addresses=LOOPBACK, **kwargs
    )  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms; fail saying ``what`` did not happen in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_settled(count: Callable[[], int], what: str, quiet: float = 1.0, timeout: float = 10.0) -> int:
    """Wait until ``count()`` has not changed for ``quiet`` seconds (what was already on its way
    has drained); fail saying ``what`` kept changing if it has not settled within ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still changing after {timeout:g} s (now {last})")
        await asyncio.sleep(0.02)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last


class Recorder:
    """Collects one subscriber's frame indices and audio (the frames' own content)."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.sizes: set[tuple[int, int]] = set()
        self.audio: list[npt.NDArray[np.float64]] = []
        self.audio_rate = 48000

    def on_video(self, frame: VideoFrame) -> None:
        self.indices.append(read_test_pattern_index(frame))
        self.sizes.add((frame.width, frame.height))

    def on_audio(self, frame: AudioFrame) -> None:
        self.audio_rate = frame.sample_rate
        self.audio.append(frame.samples[:, 0].astype(np.float64))


def auto_subscribe(session: Session, recorder: Recorder) -> list[Subscriber]:
    """Subscribe to every stream the session receives, into ``recorder``; returns the
    (growing) list of subscribers."""
    subscribers: list[Subscriber] = []

    async def subscribe(event: StreamReceived) -> None:
        subscriber = Subscriber(
            event.stream, on_video_frame=recorder.on_video, on_audio_frame=recorder.on_audio
        )
        subscribers.append(subscriber)
        await session.subscribe(subscriber)

    session.on(StreamReceived, subscribe)
    return subscribers


class EventLog:
    """Every event of a session, in order."""

    def __init__(self, session: Session) -> None:
        self.events: list[Event] = []
        session.on(Event, self.events.append)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def dominant_frequency(chunks: list[npt.NDArray[np.float64]], rate: int) -> tuple[float, float]:
    """(peak frequency in Hz, share of spectral energy within ±20 Hz of it)."""
    signal = np.concatenate(chunks)
    signal = signal - signal.mean()
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    peak = float(freqs[int(np.argmax(spectrum))])
    band = spectrum[(freqs > peak - 20) & (freqs < peak + 20)].sum()
    return peak, float(band / spectrum.sum())


def energy_near(chunks: list[npt.NDArray[np.float64]], rate: int, frequency: float) -> float:
    """Share of spectral energy within ±20 Hz of ``frequency``."""
    signal = np.concatenate(chunks)
    signal = signal - signal.mean()
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    return float(spectrum[(freqs > frequency - 20) & (freqs < frequency + 20)].sum() / spectrum.sum())


def cut_media(session: Session) -> None:
    """Close the UDP sockets of every peer connection of ``session``, as if its network had
    gone: nothing it sends afterwards (a DTLS close_notify included) reaches the server.
    (aiortc 1.16 / aioice 0.13 internals: ``RTCIceTransport._connection._protocols``.)"""
    peers = [p._pc for p in session.publishers]
    if session._subscribe_peer is not None:  # every subscriber's one receiving peer connection
        peers.append(session._subscribe_peer.pc)
    for pc in peers:
        assert pc is not None
        for transceiver in pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection
            for protocol in connection._protocols:
                protocol.transport.close()
