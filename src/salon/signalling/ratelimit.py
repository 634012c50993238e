"""A per-connection request rate limit: a token bucket, sans I/O (the caller passes ``now``).

Every message a client sends takes a token; tokens come back at ``rate`` per second, up to
``burst``. A message that finds no token is refused (``rate_limited``), and refused messages
still count: the bucket goes into debt. A client that keeps sending while refused, running up
more than ``burst`` messages of debt, is to be closed (4029). A client that backs off
recovers: its debt is paid back at ``rate`` per second like any other use.
"""

from __future__ import annotations

import enum

__all__ = ["TokenBucket", "Verdict"]


class Verdict(enum.Enum):
    ALLOW = "allow"
    """Carry the message out."""
    REFUSE = "refuse"
    """Do not carry it out; answer ``rate_limited``."""
    CLOSE = "close"
    """The client kept going while refused: close the connection."""


class TokenBucket:
    """``rate`` messages per second on average, bursts of up to ``burst``."""

    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    @property
    def tokens(self) -> float:
        """Tokens left at the last :meth:`take` (negative: debt)."""
        return self._tokens

    def take(self, now: float) -> Verdict:
        """Account for one message arriving at ``now`` (a monotonic clock, seconds)."""
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return Verdict.ALLOW
        if self._tokens < -self.burst:
            return Verdict.CLOSE
        return Verdict.REFUSE
