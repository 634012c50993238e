"""Throttling of key-frame requests (PLI/FIR) sent to one publisher stream.

Every subscriber that joins, recovers from loss or switches layer wants a key frame, and each
key frame costs the publisher a burst of bits. The SFU therefore aggregates them, as
mediasoup's ``KeyFrameRequestManager`` does: at most one request (RFC 4585 §6.3.1 PLI, or RFC
5104 §4.3.1 FIR) per ``min_interval``. A request arriving inside the interval is not lost: it
is remembered and fired by :meth:`KeyFrameRequestThrottle.poll` when the interval ends, unless
a key frame arrived in the meantime. If a request was sent but no key frame followed within
``retry_interval`` (the PLI or the key frame itself may have been lost), :meth:`poll` sends it
again.

Sans-I/O: the caller passes ``now`` (seconds, monotonic), sends the PLI when a method returns
True, and calls :meth:`poll` at :meth:`next_deadline`.
"""

from __future__ import annotations

__all__ = ["KeyFrameRequestThrottle"]

_EARLY = 1e-3
"""Seconds by which a call may come before a deadline and still count (event-loop timers can
fire up to one clock resolution early)."""


class KeyFrameRequestThrottle:
    """Decide when to send a key-frame request upstream.

    :param min_interval: minimum time between two requests, in seconds (default 0.3).
    :param retry_interval: resend a request if no key frame arrived this long after it; None
        disables retries (default 1.0).
    """

    __slots__ = ("_awaiting", "_last_sent", "_min_interval", "_pending", "_retry_interval")

    def __init__(self, min_interval: float = 0.3, retry_interval: float | None = 1.0):
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        if retry_interval is not None and retry_interval < min_interval:
            raise ValueError(f"retry_interval ({retry_interval}) must be >= min_interval ({min_interval})")
        self._min_interval = min_interval
        self._retry_interval = retry_interval
        self._last_sent: float | None = None
        self._pending = False
        self._awaiting = False

    @property
    def pending(self) -> bool:
        """Whether a request is waiting for the interval to end."""
        return self._pending

    def request(self, now: float) -> bool:
        """A key frame is wanted. True means: send a request now. False means it was
        remembered (or merged with one already pending) and :meth:`poll` will fire it."""
        if self._last_sent is None or now + _EARLY - self._last_sent >= self._min_interval:
            self._send(now)
            return True
        self._pending = True
        return False

    def poll(self, now: float) -> bool:
        """Call at :meth:`next_deadline`; True means: send a request now (a deferred one, or a
        retry because no key frame came)."""
        deadline = self.next_deadline()
        if deadline is not None and now + _EARLY >= deadline:
            self._send(now)
            return True
        return False

    def next_deadline(self) -> float | None:
        """When :meth:`poll` may next return True, or None if nothing is pending."""
        if self._last_sent is None:
            return None
        if self._pending:
            return self._last_sent + self._min_interval
        if self._awaiting and self._retry_interval is not None:
            return self._last_sent + self._retry_interval
        return None

    def on_key_frame(self, now: float) -> None:
        """A key frame arrived from the publisher: pending requests and retries are satisfied."""
        self._pending = False
        self._awaiting = False

    def _send(self, now: float) -> None:
        self._last_sent = now
        self._pending = False
        self._awaiting = True
