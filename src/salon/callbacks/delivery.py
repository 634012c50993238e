"""Callback delivery: a durable outbox in the store, drained by one dispatcher per server.

What happens in a session is put in the outbox (the store's ``callback_events``) before it is
sent, by one writer task, so the order of a session's events is the order they happened and
signalling never waits for the database or a receiver. The dispatcher sends the oldest pending
callback of each session (or archive) at a time, several sessions at once, and retries a
failed one with exponential backoff until :attr:`CallbackConfig.max_attempts`, after which it
is recorded as ``given_up`` (``salon callbacks status``). Delivery is at least once: a callback
whose answer was lost, or that was in flight when the server stopped, is sent again.

When the project has a signature secret, each request carries ``Authorization: Bearer`` and an
HS256 JWT signed with it, with ``iat``, ``jti`` and ``payload_hash`` (the SHA-256 of the body,
in hex); docs/callbacks.md says how to verify it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import httpx
import jwt

from salon.callbacks.monitor import SessionMonitor
from salon.errors import SalonError
from salon.protocol import ServerMessage
from salon.store import CallbackEvent, NewCallback, Project, Store
from salon.store.registry import Registry

__all__ = ["CallbackConfig", "CallbackService", "backoff", "sign"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    """How callbacks are delivered.

    :param timeout: seconds a receiver has to answer one request.
    :param max_attempts: attempts before a callback is given up.
    :param backoff_base: seconds before the first retry; each later one waits twice as long...
    :param backoff_cap: ...up to this many seconds. With the defaults, 15 attempts span about 40 minutes.
    :param concurrency: requests in flight at once (one per session or archive at most).
    """

    timeout: float = 10.0
    max_attempts: int = 15
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    concurrency: int = 16


def backoff(attempts: int, config: CallbackConfig) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, 4, … up to the cap)."""
    return float(min(config.backoff_cap, config.backoff_base * 2 ** max(0, attempts - 1)))


def sign(body: str, secret: str, now: float) -> str:
    """The ``Authorization`` JWT of a signed callback."""
    claims = {
        "iat": int(now),
        "jti": str(uuid.uuid4()),
        "payload_hash": hashlib.sha256(body.encode()).hexdigest(),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _url_for(project: Project, kind: str) -> str | None:
    if kind == "archive":
        return project.archive_callback_url or project.callback_url
    return project.callback_url


def _where(url: str) -> str:
    """A URL for the log, without its path and query (which may carry a secret)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _now_ms() -> int:
    return int(time.time() * 1000)


class CallbackService:
    """The :class:`~salon.signalling.observer.SessionObserver` that turns sessions into
    callbacks, and the tasks that store and deliver them. Owned by the server: :meth:`start`,
    then :meth:`close` (idempotent), which stores what was queued and leaves what was not yet
    delivered in the outbox for the next start."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: CallbackConfig | None = None,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config or CallbackConfig()
        self.monitor = SessionMonitor()
        self._client = client
        self._own_client = client is None
        self._queue: asyncio.Queue[NewCallback] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    # -- SessionObserver -------------------------------------------------------------------

    def session_started(self, session_id: str, api_key: str) -> None:
        self.emit(self.monitor.session_started(session_id, api_key, _now_ms()))

    def delivered(self, session_id: str, api_key: str, message: ServerMessage) -> None:
        self.emit(self.monitor.delivered(session_id, message, _now_ms()))

    def session_ended(self, session_id: str, api_key: str) -> None:
        self.emit(self.monitor.session_ended(session_id, api_key, _now_ms()))

    def emit(self, callbacks: list[NewCallback]) -> None:
        """Queue callbacks for the outbox (never blocks)."""
        if self._closed:
            return
        for callback in callbacks:
            self._queue.put_nowait(callback)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout, follow_redirects=False)
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write(), name="salon-callbacks-writer")
        self._dispatcher = loop.create_task(self._dispatch(), name="salon-callbacks-dispatcher")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._queue.join()  # what was observed goes to the store first
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        tasks = [t for t in (self._dispatcher, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client and self._client is not None:
            await self._client.aclose()

    # -- the outbox writer -----------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._store(batch)
            except Exception:
                logger.exception("could not store %d callbacks", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _store(self, batch: list[NewCallback]) -> None:
        wanted: list[NewCallback] = []
        for callback in batch:
            project = await self.registry.project(callback.api_key)
            if project is not None and _url_for(project, callback.kind):
                wanted.append(callback)
        if wanted:
            await self.store.add_callbacks(wanted)
            self._wake.set()

    # -- the dispatcher --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._start_due()
                wait = await self._until_next()
            except SalonError as exc:  # the database did not answer: try again shortly
                logger.warning("callback outbox unavailable: %s", exc.message)
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _start_due(self) -> None:
        room = self.config.concurrency - len(self._in_flight)
        if room <= 0:
            return
        due = await self.store.due_callbacks(_now_ms(), room, frozenset(self._in_flight))
        for event in due:
            task = asyncio.get_running_loop().create_task(
                self._deliver(event), name=f"salon-callback-{event.id}"
            )
            self._in_flight[event.order_key] = task
            task.add_done_callback(functools.partial(self._delivery_done, event.order_key))

    def _delivery_done(self, order_key: str, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(order_key) is task:
            del self._in_flight[order_key]
        if not task.cancelled() and task.exception() is not None:
            logger.error("callback delivery failed", exc_info=task.exception())
        self._wake.set()

    async def _until_next(self) -> float:
        due = await self.store.next_callback_due()
        if due is None:
            return 60.0
        return min(60.0, max(0.0, (due - _now_ms()) / 1000))

    async def _deliver(self, event: CallbackEvent) -> None:
        assert self._client is not None
        project = await self.store.get_project(event.api_key)  # fresh: URLs and secrets may change
        url = None if project is None else _url_for(project, event.kind)
        if project is None or not url:
            await self.store.finish_callback(
                event.id, status="given_up", now=_now_ms(), error="no callback URL"
            )
            return
        headers = {"Content-Type": "application/json"}
        if project.signature_secret:
            headers["Authorization"] = "Bearer " + sign(event.body, project.signature_secret, time.time())
        try:
            response = await self._client.post(url, content=event.body.encode(), headers=headers)
            error = "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: could not reach {_where(url)}"
        if not error:
            await self.store.finish_callback(event.id, status="delivered", now=_now_ms())
            return
        attempts = event.attempts + 1
        if attempts >= self.config.max_attempts:
            logger.warning(
                "callback %d to %s given up after %d attempts: %s", event.id, _where(url), attempts, error
            )
            await self.store.finish_callback(event.id, status="given_up", now=_now_ms(), error=error)
        else:
            at = _now_ms() + int(backoff(attempts, self.config) * 1000)
            logger.info("callback %d to %s failed (%s), attempt %d", event.id, _where(url), error, attempts)
            await self.store.retry_callback(event.id, at=at, error=error)
