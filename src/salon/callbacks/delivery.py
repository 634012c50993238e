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
import collections
import contextlib
import functools
import hashlib
import heapq
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import jwt

from salon.callbacks.http import CallbackClient, CallbackHttpError
from salon.callbacks.monitor import SessionMonitor
from salon.errors import SalonError
from salon.ids import decode_session_id
from salon.protocol import ConnectionInfo, ServerMessage, StreamInfo
from salon.store import CallbackEvent, CallbackOutcome, NewCallback, Project, Store
from salon.store.registry import Registry

__all__ = ["CallbackConfig", "CallbackService", "backoff", "sign"]

logger = logging.getLogger(__name__)

#: Seconds between two reads of which sessions have pending callbacks (a safety net: the
#: writer tells the dispatcher of every callback it stores).
_RESCAN_INTERVAL = 60.0

#: Pending callbacks of a session read at once: its next ones go without reading the outbox
#: again (each still only after the one before it is recorded as delivered).
_READ_AHEAD = 8
#: ...for at most this many seconds: later, they are read again with their project's current
#: callback URL and signature secret (the bound the registry's project cache has too).
_READ_AHEAD_FOR = 1.0


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


#: The outcome of an attempt another node of the cluster claimed first (not recorded here).
CLAIMED_ELSEWHERE = "claimed_elsewhere"

#: Seconds after losing a claim before the key is read again: the winner has usually sent and
#: recorded it by then, and this node's own next callbacks of the key wait behind it (waiting
#: for the whole lease held a session's last callbacks some 25 s on a cluster).
CLAIMED_RECHECK = 1.0


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
        client: CallbackClient | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config or CallbackConfig()
        self.monitor = SessionMonitor()
        #: A node of a cluster: a session's first and last connection here are not its first
        #: and last anywhere, so ``sessionCreated`` and ``sessionDestroyed`` come from
        #: :meth:`session_created` and :meth:`session_destroyed` (called by the cluster, which
        #: decides in Redis), not from :meth:`session_started` and :meth:`session_ended`.
        self.cluster_sessions = False
        self._client = client
        self._own_client = client is None
        self._queue: asyncio.Queue[NewCallback] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._ready: dict[str, None] = {}  # order keys whose head may be due, oldest first
        self._in_flight: dict[str, asyncio.Task[CallbackOutcome]] = {}
        self._outcomes: dict[str, CallbackOutcome] = {}  # finished, not yet recorded
        self._retry_at: dict[str, int] = {}  # order key -> when its head is tried again (ms)
        self._retries: list[tuple[int, str]] = []  # a heap of (_retry_at, order key)
        # The oldest pending callbacks of an order key (with their projects) as last read, the
        # first being its head.
        self._ahead: dict[str, collections.deque[tuple[CallbackEvent, Project | None]]] = {}
        self._read_at: dict[str, float] = {}  # when (time.monotonic()) _ahead[key] was read
        # _ahead[key] held every pending callback of the key when it was read, if the writer
        # noted none for it since: _noted_at[key] <= _complete_at[key] (values of _seq). Then
        # the key needs no read once they are all delivered.
        self._seq = 0
        self._noted_at: dict[str, int] = {}
        self._complete_at: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False
        # Callbacks emitted and callbacks the writer is done with (stored, or failed to be),
        # and who waits for the writer to reach a count (:meth:`stored`).
        self._emitted = 0
        self._written = 0
        self._stored_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- SessionObserver -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Callbacks emitted but not yet stored in the outbox (metrics)."""
        return self._queue.qsize()

    def session_started(self, session_id: str, api_key: str) -> None:
        created = not self.cluster_sessions
        self.emit(self.monitor.session_started(session_id, api_key, _now_ms(), created=created))

    def delivered(self, session_id: str, api_key: str, message: ServerMessage) -> None:
        self.emit(self.monitor.delivered(session_id, message, _now_ms()))

    def session_ended(self, session_id: str, api_key: str) -> None:
        destroyed = not self.cluster_sessions
        self.emit(self.monitor.session_ended(session_id, api_key, _now_ms(), destroyed=destroyed))

    def session_created(self, session_id: str, api_key: str) -> None:
        """In a cluster: the session's first connection on any node arrived here."""
        self.emit([self.monitor.session_event(session_id, api_key, "sessionCreated", _now_ms())])

    def session_destroyed(self, session_id: str, api_key: str) -> None:
        """In a cluster: the session's last connection on any node left here (or on a dead
        node this node reaped)."""
        self.emit([self.monitor.session_event(session_id, api_key, "sessionDestroyed", _now_ms())])

    def reaped(self, session_id: str, connections: list[ConnectionInfo], streams: list[StreamInfo]) -> None:
        """A dead cluster node's connections and streams, reported gone by this node: their
        ``streamDestroyed`` and ``connectionDestroyed`` callbacks (the dead node cannot)."""
        try:
            api_key = decode_session_id(session_id).api_key
        except SalonError:
            return
        self.emit(self.monitor.reaped(session_id, api_key, connections, streams, _now_ms()))

    def emit(self, callbacks: list[NewCallback]) -> None:
        """Queue callbacks for the outbox (never blocks)."""
        if self._closed:
            return
        for callback in callbacks:
            self._queue.put_nowait(callback)
        self._emitted += len(callbacks)

    async def stored(self) -> None:
        """Return once every callback emitted so far is in the outbox (or the writer gave up
        on it, or the service closed): in a cluster, what this node observed of a session is
        ordered before what another node observes after being told so."""
        target = self._emitted
        if self._written >= target or self._writer is None or self._closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._stored_waiters.append((target, waiter))
        await waiter

    def _release_stored(self, everyone: bool = False) -> None:
        waiting = []
        for target, waiter in self._stored_waiters:
            if everyone or target <= self._written:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._stored_waiters = waiting

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = CallbackClient(self.config.timeout, max_idle=self.config.concurrency)
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
        self._release_stored(everyone=True)
        tasks = [t for t in (self._dispatcher, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._outcomes:  # answered but not yet recorded: record them, or they are sent again
            with contextlib.suppress(SalonError):
                await self.store.record_callbacks(list(self._outcomes.values()))
            self._outcomes.clear()
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
                self._written += len(batch)
                self._release_stored()

    async def _store(self, batch: list[NewCallback]) -> None:
        wanted: list[NewCallback] = []
        for callback in batch:
            project = await self.registry.project(callback.api_key)
            if project is not None and _url_for(project, callback.kind):
                wanted.append(callback)
        if wanted:
            await self.store.add_callbacks(wanted)
            self._note_pending([c.order_key for c in wanted])

    # -- the dispatcher --------------------------------------------------------------------
    #
    # The dispatcher keeps, in memory, which order keys may have a callback to send (_ready,
    # oldest first), which are busy (a request in flight, an outcome not yet recorded, or a
    # retry waiting for its time), and when the next retry is due. It reads the outbox only for
    # the oldest pending rows of ready keys (up to _READ_AHEAD each, one index range per key,
    # many keys per query) and records outcomes in batches, so the cost of a delivery does not
    # depend on how many callbacks are pending.
    # The outbox stays the truth: at start-up (and every minute) the keys with pending
    # callbacks are read from it, and a key is only ever sent its oldest pending callback.

    def _note_pending(self, order_keys: list[str]) -> None:
        """These keys may have new pending callbacks (stored, committed)."""
        self._seq += 1
        for key in order_keys:
            self._ready.setdefault(key)
            self._noted_at[key] = self._seq
        self._wake.set()

    def _forget(self, key: str) -> None:
        for state in (self._ahead, self._read_at, self._complete_at, self._noted_at):
            state.pop(key, None)

    def _busy(self, order_key: str) -> bool:
        return order_key in self._in_flight or order_key in self._outcomes or order_key in self._retry_at

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        rescan_at = 0.0
        while True:
            self._wake.clear()
            try:
                if loop.time() >= rescan_at:
                    self._note_pending(await self.store.pending_callback_keys())
                    rescan_at = loop.time() + _RESCAN_INTERVAL
                await self._record()
                self._release_retries()
                await self._start_due()
                wait = self._until_next()
            except SalonError as exc:  # the database did not answer: try again shortly
                logger.warning("callback outbox unavailable: %s", exc.message)
                wait = 1.0
            wait = min(wait, max(0.0, rescan_at - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _record(self) -> None:
        """Store the outcomes of finished requests (one transaction); then their keys' next
        callbacks may go, or their retries wait."""
        if not self._outcomes:
            return
        outcomes = dict(self._outcomes)
        await self.store.record_callbacks([o for o in outcomes.values() if o.status != CLAIMED_ELSEWHERE])
        for key, outcome in outcomes.items():
            del self._outcomes[key]
            ahead = self._ahead.get(key)
            if outcome.status == CLAIMED_ELSEWHERE:
                # Another node sends this one: read the key again soon (CLAIMED_RECHECK): by then
                # that node has recorded it and moved on, or, still sending it, holds the head
                # of the key (its next attempt time the lease's end, waited for as a retry).
                assert outcome.retry_at is not None
                self._ahead.pop(key, None)
                self._retry_at[key] = outcome.retry_at
                heapq.heappush(self._retries, (outcome.retry_at, key))
                continue
            if outcome.status == "pending" and outcome.retry_at is not None:
                self._ahead.pop(key, None)  # read again when the retry is due
                self._retry_at[key] = outcome.retry_at
                heapq.heappush(self._retries, (outcome.retry_at, key))
                continue
            if ahead and ahead[0][0].id == outcome.id:
                ahead.popleft()
                complete = self._noted_at.get(key, 0) <= self._complete_at.get(key, -1)
                if not ahead and complete:  # it was the last pending callback of its key
                    self._forget(key)
                    continue
            else:
                self._ahead.pop(key, None)
            self._ready.setdefault(key)

    def _release_retries(self) -> None:
        now = _now_ms()
        while self._retries and self._retries[0][0] <= now:
            at, key = heapq.heappop(self._retries)
            if self._retry_at.get(key) == at:
                del self._retry_at[key]
                self._ready.setdefault(key)

    async def _start_due(self) -> None:
        """Send the heads of ready keys while there is room: from what was read ahead, else
        read from the outbox (many keys per query)."""
        while self._ready:
            room = self.config.concurrency - len(self._in_flight)
            if room <= 0:
                return
            keys: list[str] = []
            while self._ready and len(keys) < room:
                key = next(iter(self._ready))
                del self._ready[key]
                if self._busy(key):  # it comes back when it is no longer busy
                    continue
                if self._ahead.get(key) and time.monotonic() - self._read_at[key] < _READ_AHEAD_FOR:
                    self._start(*self._ahead[key][0])
                    room -= 1
                else:
                    keys.append(key)
            if not keys:
                continue
            seq = self._seq
            try:
                found = await self.store.callback_heads(keys, per_key=_READ_AHEAD)
            except SalonError:
                self._ready = {**dict.fromkeys(keys), **self._ready}
                raise
            read_at = time.monotonic()
            for key in keys:
                self._ahead.pop(key, None)
                self._read_at[key] = read_at
            for event, project in found:
                self._ahead.setdefault(event.order_key, collections.deque()).append((event, project))
            for key in keys:
                if key not in self._ahead:  # no pending callback: forgotten until one is stored
                    self._forget(key)
                    continue
                if len(self._ahead[key]) < _READ_AHEAD:  # all of them, unless one was stored since
                    self._complete_at[key] = seq
                else:
                    self._complete_at.pop(key, None)
                if not self._busy(key):
                    self._start(*self._ahead[key][0])

    def _start(self, event: CallbackEvent, project: Project | None) -> None:
        """Send ``event``, the oldest pending callback of its key, or wait for its retry time."""
        key = event.order_key
        if event.next_attempt_at > _now_ms():  # a retry not yet due (after a restart)
            self._ahead.pop(key, None)
            self._retry_at[key] = event.next_attempt_at
            heapq.heappush(self._retries, (event.next_attempt_at, key))
            return
        task = asyncio.get_running_loop().create_task(
            self._deliver(event, project), name=f"salon-callback-{event.id}"
        )
        self._in_flight[key] = task
        task.add_done_callback(functools.partial(self._delivery_done, event))

    def _delivery_done(self, event: CallbackEvent, task: asyncio.Task[CallbackOutcome]) -> None:
        if self._in_flight.get(event.order_key) is task:
            del self._in_flight[event.order_key]
        if task.cancelled():  # the server is stopping: the callback stays pending
            return
        exc = task.exception()
        if exc is None:
            outcome = task.result()
        else:
            logger.error("callback delivery failed", exc_info=exc)
            outcome = self._failed(event, f"{exc.__class__.__name__}", "")
        self._outcomes[event.order_key] = outcome
        self._wake.set()

    def _lease_seconds(self) -> float:
        """How long a claimed attempt is this server's: the request's timeout and a margin."""
        return 2 * self.config.timeout + 5.0

    def _until_next(self) -> float:
        if not self._retries:
            return 60.0
        return min(60.0, max(0.0, (self._retries[0][0] - _now_ms()) / 1000))

    def _failed(self, event: CallbackEvent, error: str, where: str) -> CallbackOutcome:
        attempts = event.attempts + 1
        now = _now_ms()
        if attempts >= self.config.max_attempts:
            logger.warning(
                "callback %d to %s given up after %d attempts: %s", event.id, where, attempts, error
            )
            return CallbackOutcome(event.id, "given_up", now, error=error)
        logger.info("callback %d to %s failed (%s), attempt %d", event.id, where, error, attempts)
        at = now + int(backoff(attempts, self.config) * 1000)
        return CallbackOutcome(event.id, "pending", now, error=error, retry_at=at)

    async def _deliver(self, event: CallbackEvent, project: Project | None) -> CallbackOutcome:
        """One attempt, claimed first (several nodes may share the outbox: the one whose claim
        wins sends it). The project (URLs, secret) was read with the callback, just now."""
        assert self._client is not None
        lease_until = _now_ms() + int(self._lease_seconds() * 1000)
        if not await self.store.claim_callback(event, lease_until):
            recheck = _now_ms() + int(CLAIMED_RECHECK * 1000)
            return CallbackOutcome(event.id, CLAIMED_ELSEWHERE, _now_ms(), retry_at=min(lease_until, recheck))
        url = None if project is None else _url_for(project, event.kind)
        if project is None or not url:
            return CallbackOutcome(event.id, "given_up", _now_ms(), error="no callback URL")
        headers = {"Content-Type": "application/json", "User-Agent": "salon-callbacks"}
        if project.signature_secret:
            headers["Authorization"] = "Bearer " + sign(event.body, project.signature_secret, time.time())
        try:
            status = await self._client.post(url, event.body.encode(), headers)
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except CallbackHttpError as exc:
            error = f"{exc}: could not reach {_where(url)}"
        if not error:
            return CallbackOutcome(event.id, "delivered", _now_ms())
        return self._failed(event, error, _where(url))
