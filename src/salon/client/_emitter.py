"""Typed event dispatch and drop-oldest async iterators."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Emitter", "LatestQueue"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E")


class LatestQueue(Generic[T]):
    """An async iterator over items put with :meth:`put`; keeps at most ``maxsize`` items,
    dropping the **oldest** when full (media must not block the receiver). :meth:`end` makes
    the iterator stop once the items already queued are consumed."""

    def __init__(self, maxsize: int, on_close: Callable[[LatestQueue[T]], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: collections.deque[T] = collections.deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._ended = False
        self._on_close = on_close
        self.dropped = 0
        """Items dropped because the consumer fell behind."""

    def put(self, item: T) -> None:
        if self._ended:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop receiving (the producer forgets this queue)."""
        self.end()
        self._items.clear()
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> LatestQueue[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


Handler = Callable[[E], None] | Callable[[E], Awaitable[None]]


class Emitter(Generic[E]):
    """Dispatches events of base type ``E`` to handlers registered per event class and to
    async iterators. A handler's exception is logged, never propagated: one buggy handler
    cannot break the session. Coroutine handlers run as tasks owned by the emitter."""

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self._handlers: dict[type[E], list[Callable[[E], object]]] = {}
        self._queues: list[LatestQueue[E]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def on(self, event_type: type[E], handler: Callable[[E], object]) -> Callable[[], None]:
        self._handlers.setdefault(event_type, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(event_type, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def iterator(self, maxsize: int) -> LatestQueue[E]:
        queue: LatestQueue[E] = LatestQueue(maxsize, on_close=self._forget)
        self._queues.append(queue)
        return queue

    def _forget(self, queue: LatestQueue[E]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    def emit(self, event: E) -> None:
        logger.debug("%r: %r", self._owner, event)
        for cls in type(event).__mro__:
            for handler in list(self._handlers.get(cls, ())):
                self.deliver(handler, event)
        for queue in self._queues:
            queue.put(event)

    def deliver(self, handler: Callable[[E], object], event: E) -> None:
        """Call one handler with one event (a coroutine handler runs as an owned task)."""
        try:
            result = handler(event)
        except Exception:
            logger.exception("%r: %s handler %r failed", self._owner, type(event).__name__, handler)
            return
        if inspect.isawaitable(result):
            self._spawn(result, handler)

    def _spawn(self, awaitable: Awaitable[object], handler: object) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                logger.exception("%r: handler %r failed", self._owner, handler)

        task = asyncio.get_running_loop().create_task(run(), name=f"{self._owner!r}-handler")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end(self) -> None:
        """End every iterator (after the events already queued)."""
        for queue in self._queues:
            queue.end()
        self._queues.clear()

    async def aclose(self, grace: float = 1.0) -> None:
        """End the iterators; give handler tasks still running ``grace`` seconds, then
        cancel them."""
        self.end()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
