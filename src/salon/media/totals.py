"""A media worker's cumulative media counters, for Prometheus (:mod:`salon.observability.metrics`).

Producers and consumers count what they forward in their own stats; they come and go, and a
Prometheus counter must never go down. So each one adds its counts to :data:`RETIRED` when it
closes (:meth:`Producer._close <salon.media.producer.Producer>`,
:meth:`Consumer._close <salon.media.consumer.Consumer>`), and :func:`totals` adds those of the
live ones: a total since the worker started, whatever closed since. Pipes between routers
(:mod:`salon.media.pipe`) do the same with :data:`PIPE_COUNTERS` (the sending ends count
``out``, the receiving ends ``in``); the producers mirrored at a pipe's receiving end count as
the worker's producers.

Nothing here runs per packet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from salon.media.consumer import Consumer
    from salon.media.pipe import PipeTransport
    from salon.media.producer import Producer
    from salon.media.transport import WebRtcTransport

__all__ = [
    "COUNTERS",
    "PIPE_COUNTERS",
    "RETIRED",
    "retire_consumer",
    "retire_pipe",
    "retire_producer",
    "totals",
]

#: The counters, in :func:`totals`' keys.
COUNTERS = (
    "packets_received",  # RTP packets from publishers (RTX included)
    "bytes_received",
    "packets_forwarded",  # RTP packets sent to subscribers (retransmissions not included)
    "bytes_forwarded",  # their payload bytes
    "packets_lost",  # publishers' packets found missing (each counted once)
    "packets_recovered",  # ...that arrived after a NACK (by RTX or retransmission)
    "packets_unrecovered",  # ...given up
    "nacks_received",  # NACKs from subscribers
    "packets_retransmitted",  # packets sent again to subscribers from the cache
    "key_frame_requests_received",  # PLI/FIR from subscribers
    "key_frame_requests_sent",  # PLI/FIR sent to publishers (throttled)
    "key_frames_received",
)

#: What pipes count, in :func:`totals`' keys (retransmissions through a pipe included).
PIPE_COUNTERS = ("pipe_packets_out", "pipe_bytes_out", "pipe_packets_in", "pipe_bytes_in")

#: What closed producers, consumers and pipes counted, since the worker started.
RETIRED: dict[str, int] = dict.fromkeys(COUNTERS + PIPE_COUNTERS, 0)


def _producer_counts(producer: Producer) -> tuple[tuple[str, int], ...]:
    stats = producer.stats
    lost, recovered, given_up = producer.nack_counts()
    return (
        ("packets_received", stats.packets_received),
        ("bytes_received", stats.bytes_received),
        ("packets_lost", lost),
        ("packets_recovered", recovered),
        ("packets_unrecovered", given_up),
        ("key_frame_requests_sent", stats.key_frame_requests_sent),
        ("key_frames_received", stats.key_frames),
    )


def _consumer_counts(consumer: Consumer) -> tuple[tuple[str, int], ...]:
    stats = consumer.stats
    return (
        ("packets_forwarded", stats.packets_sent),
        ("bytes_forwarded", stats.octets_sent),
        ("nacks_received", stats.nacks_received),
        ("packets_retransmitted", stats.retransmitted_from_cache),
        ("key_frame_requests_received", stats.key_frame_requests_received),
    )


def _pipe_counts(pipe: PipeTransport) -> tuple[tuple[str, int], ...]:
    stats = pipe.stats
    if pipe.sending:
        return (("pipe_packets_out", stats.packets_sent), ("pipe_bytes_out", stats.bytes_sent))
    return (("pipe_packets_in", stats.packets_received), ("pipe_bytes_in", stats.bytes_received))


def retire_pipe(pipe: PipeTransport) -> None:
    """Keep a closing pipe end's counts in the totals."""
    for key, value in _pipe_counts(pipe):
        RETIRED[key] += value


def retire_producer(producer: Producer) -> None:
    """Keep a closing producer's counts in the totals."""
    for key, value in _producer_counts(producer):
        RETIRED[key] += value


def retire_consumer(consumer: Consumer) -> None:
    """Keep a closing consumer's counts in the totals."""
    for key, value in _consumer_counts(consumer):
        RETIRED[key] += value


def totals(transports: Iterable[WebRtcTransport], pipes: Iterable[PipeTransport] = ()) -> dict[str, int]:
    """Everything counted since the worker started: :data:`RETIRED` plus the live producers
    and consumers of ``transports`` and the live ``pipes`` (with a receiving end's producers)."""
    result = dict(RETIRED)
    for pipe in pipes:
        if pipe.closed:
            continue  # retired already
        for key, value in _pipe_counts(pipe):
            result[key] += value
        if not pipe.sending:
            for producer in pipe.producers.values():
                for key, value in _producer_counts(producer):
                    result[key] += value
    for transport in transports:
        for producer in transport.producers.values():
            for key, value in _producer_counts(producer):
                result[key] += value
        for consumer in transport.consumers.values():
            for key, value in _consumer_counts(consumer):
                result[key] += value
    return result
