"""Recorder: a stream's RTP, copied from the SFU to an archiver process (worker side).

A :class:`Recorder` is a consumer of one stream's producers that sends to a local archiver
(:mod:`salon.archive.archiver`) rather than to a subscriber. It sits on the producer's packet
path (:meth:`~salon.media.producer.Producer.receive_rtp`, after SRTP decryption and RTX
unwrapping) and, per packet, prefixes the plain RTP packet with the recording's token and a
track byte and sends it in one non-blocking ``send`` on a UDP socket connected to the
archiver's sink on the loopback. It never waits: a datagram the kernel does not take at once
(the archiver lags and its socket buffer is full, or it died) is dropped and counted
(:attr:`RecorderStats.dropped`). It is not a forwarding consumer, so it takes no part in
bandwidth allocation (it takes what the producer receives).

Datagrams, both directions (the token authenticates them: a datagram with another token is
ignored, so another local process cannot feed a recording, and the worker's socket, connected
to the sink, only hears from the sink's address)::

    worker → archiver   token (16 bytes) | track (1 byte: 0 audio, 1 video) | RTP packet
    archiver → worker   token (16 bytes) | b"N" | track | sequence numbers (2 bytes each)
                        token (16 bytes) | b"K"                 (send a key frame)

Like any subscriber the recorder asks the publisher for a key frame when it starts, and the
archiver asks again (``K``) while it waits for one or after a loss it could not repair. A
NACK from the archiver (``N``) is answered from the producer's retransmission buffer; what the
buffer no longer holds is NACKed upstream by the producer, and arrives on the packet path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from salon.media.errors import MediaStateError

if TYPE_CHECKING:
    from salon.media.producer import Producer

__all__ = ["TOKEN_SIZE", "TRACK_AUDIO", "TRACK_VIDEO", "Recorder", "RecorderStats"]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

TOKEN_SIZE = 16
TRACK_AUDIO = 0
TRACK_VIDEO = 1
#: Send buffer of a recorder socket: bursts of a key frame at high bit rate fit.
SEND_BUFFER = 1 << 20
#: Sequence numbers one NACK datagram may carry (beyond: ignored).
MAX_NACK = 512


@dataclass(slots=True)
class RecorderStats:
    packets_sent: int = 0
    bytes_sent: int = 0
    dropped: int = 0
    """Packets not sent because the archiver's socket did not take them at once."""
    nacks_received: int = 0
    retransmitted: int = 0
    cache_misses: int = 0
    key_frame_requests: int = 0
    bad_feedback: int = 0
    """Datagrams from the archiver that were not well-formed feedback with our token."""


class Recorder:
    """One stream being recorded: its producers' packets to one archiver sink.

    :param producers: the stream's producers (audio and/or video) to record.
    :param sink: the archiver's UDP address; must be a loopback address.
    :param token: the recording's secret (:data:`TOKEN_SIZE` bytes), sent with every datagram.

    :meth:`close` (idempotent) detaches it from the producers and closes its socket; it also
    closes when all its producers close.
    """

    def __init__(
        self,
        producers: list[Producer],
        sink: tuple[str, int],
        token: bytes,
        *,
        recorder_id: str | None = None,
    ) -> None:
        if len(token) != TOKEN_SIZE:
            raise MediaStateError(f"a recording token is {TOKEN_SIZE} bytes, got {len(token)}")
        host = sink[0]
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise MediaStateError(f"a recording sink must be on the loopback, not {host}")
        self.id = recorder_id or f"rec-{next(_ids)}-{secrets.token_hex(3)}"
        self.token = token
        self.sink = sink
        self.stats = RecorderStats()
        self.closed = False
        self.producers = {p.kind: p for p in producers if not p.closed}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self._sock.connect(sink)
        except OSError:
            self._sock.close()
            raise
        self._prefix = {
            "audio": token + bytes([TRACK_AUDIO]),
            "video": token + bytes([TRACK_VIDEO]),
        }
        self._send = self._sock.send
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._on_readable)
        for producer in self.producers.values():
            producer.add_recorder(self)
        now = time.monotonic()
        video = self.producers.get("video")
        if video is not None:
            video.request_key_frame(now)

    def __repr__(self) -> str:
        return f"Recorder({self.id} {'+'.join(self.producers)} → {self.sink[0]}:{self.sink[1]})"

    # ----------------------------------------------------------------------------------------
    # Packet path (called by the producer, synchronously)

    def send_rtp(self, producer: Producer, data: bytes) -> None:
        try:
            self._send(self._prefix[producer.kind] + data)
        except OSError:  # BlockingIOError (buffer full), ConnectionRefusedError (archiver gone)
            self.stats.dropped += 1
            return
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(data)

    # ----------------------------------------------------------------------------------------
    # Feedback from the archiver

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ECONNREFUSED from an earlier send to a closed sink: nothing to read.
                return
            self.handle_feedback(data, time.monotonic())

    def handle_feedback(self, data: bytes, now: float) -> None:
        """Act on one feedback datagram (NACK or key-frame request) from the archiver."""
        if self.closed:
            return
        if len(data) < TOKEN_SIZE + 1 or not secrets.compare_digest(data[:TOKEN_SIZE], self.token):
            self.stats.bad_feedback += 1
            return
        kind = data[TOKEN_SIZE : TOKEN_SIZE + 1]
        if kind == b"K":
            video = self.producers.get("video")
            if video is not None:
                self.stats.key_frame_requests += 1
                video.request_key_frame(now)
            return
        body = data[TOKEN_SIZE + 2 :]
        if kind != b"N" or len(data) < TOKEN_SIZE + 2 or len(body) % 2:
            self.stats.bad_feedback += 1
            return
        track = data[TOKEN_SIZE + 1]
        producer = self.producers.get("audio" if track == TRACK_AUDIO else "video")
        if producer is None or producer.closed:
            return
        self.stats.nacks_received += 1
        seqs = struct.unpack(f"!{len(body) // 2}H", body)[:MAX_NACK]
        misses: list[int] = []
        for seq in seqs:
            cached = producer.get_cached(seq)
            if cached is None:
                misses.append(seq)
            else:
                self.stats.retransmitted += 1
                self.send_rtp(producer, cached)
        if misses:
            self.stats.cache_misses += len(misses)
            producer.request_retransmission(misses, now)

    # ----------------------------------------------------------------------------------------
    # Closing

    def producer_closed(self, producer: Producer) -> None:
        """Called by a producer when it closes; the recorder closes with the last one."""
        self.producers.pop(producer.kind, None)
        if not self.producers:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for producer in list(self.producers.values()):
            producer.remove_recorder(self)
        try:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        except RuntimeError:  # no running loop: the worker is shutting down
            pass
        self._sock.close()
        logger.info("%r: closed (%s)", self, self.stats)

    def dump(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kinds": sorted(self.producers),
            "closed": self.closed,
            "stats": asdict(self.stats),
        }
