"""Limits on what an HTTP client can make the server do: request-body size and request rates."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY_SIZE", "BodyLimit", "RateLimiter", "RequestTooLarge"]

#: The largest request body any route accepts, bytes (``--max-body-size``).
DEFAULT_MAX_BODY_SIZE = 1024 * 1024


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


class RequestTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (an HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_message(limit), headers={"Connection": "close"})


class BodyLimit:
    """Refuses request bodies over ``max_size`` bytes with 413, before reading them.

    A ``Content-Length`` over the limit is answered at once, nothing of the body read. A body
    without one (chunked), or one longer than it claims, is counted as it streams in: the read
    that passes the limit raises :class:`RequestTooLarge` inside the application, which answers
    413, and the rest of the body is never read (the connection is closed).
    """

    def __init__(self, app: ASGIApp, max_size: int = DEFAULT_MAX_BODY_SIZE) -> None:
        self.app = app
        self.max_size = max_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_size
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the HTTP parser refuses these before we are called
                if declared > limit:
                    await _send_413(send, limit)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"code": "request_too_large", "message": _too_large_message(limit)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key (a client address): ``burst`` at once, then one per ``interval`` s.

    The table is bounded: at most ``max_keys`` buckets; when full, buckets that have refilled
    (which behave exactly like absent ones) are dropped, and if none has, the oldest half.
    """

    def __init__(self, burst: int, interval: float, *, max_keys: int = 100_000) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("a rate limit needs a burst of at least 1 and an interval above 0")
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, now: float | None = None) -> float | None:
        """Take a token for ``key``: None if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed / self.interval)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) * self.interval

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) / self.interval >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[key]

    @staticmethod
    def retry_after(seconds: float) -> str:
        """The ``Retry-After`` header value for a wait of ``seconds``."""
        return str(max(1, math.ceil(seconds)))
