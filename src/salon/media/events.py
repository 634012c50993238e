"""Typed events for the media objects (router, transport, producer, consumer).

Each media object owns an :class:`EventEmitter` parametrised by its event base class, so a
listener receives typed dataclasses and narrows them with ``match``/``isinstance`` (the
aioquic ``events.py`` model) instead of string event names. Listeners are called
synchronously, in registration order. A listener that raises is logged and skipped, so one
buggy listener cannot break the emitter or the packet path (mediasoup's ``safeEmit``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["EventEmitter", "Listener"]

logger = logging.getLogger(__name__)

E = TypeVar("E")
Listener = Callable[[E], None]


class EventEmitter(Generic[E]):
    """Synchronous, typed, exception-isolating listener list."""

    __slots__ = ("_listeners", "_owner")

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self._listeners: list[Listener[E]] = []

    def add_listener(self, listener: Listener[E]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener[E]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def clear(self) -> None:
        self._listeners.clear()

    def emit(self, event: E) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # A listener bug must not break the media object that emits: log it loudly.
                logger.exception("%r: listener %r failed on %r", self._owner, listener, event)
