"""The seam through which other parts watch live sessions (session-monitoring callbacks).

:class:`~salon.signalling.service.SignallingService` tells its observer when a live session
starts (its first connection), every event it delivers to a session's connections, and when
the session ends (its last connection left). Calls are synchronous and must not block: an
observer queues what it needs and does its I/O elsewhere.
"""

from __future__ import annotations

from typing import Protocol

from salon.protocol import ServerMessage

__all__ = ["Observers", "SessionObserver"]


class SessionObserver(Protocol):
    def session_started(self, session_id: str, api_key: str) -> None: ...

    def delivered(self, session_id: str, api_key: str, message: ServerMessage) -> None: ...

    def session_ended(self, session_id: str, api_key: str) -> None: ...


class Observers:
    """Several observers as one: each is told everything, in the order given."""

    def __init__(self, *observers: SessionObserver) -> None:
        self.observers = observers

    def session_started(self, session_id: str, api_key: str) -> None:
        for observer in self.observers:
            observer.session_started(session_id, api_key)

    def delivered(self, session_id: str, api_key: str, message: ServerMessage) -> None:
        for observer in self.observers:
            observer.delivered(session_id, api_key, message)

    def session_ended(self, session_id: str, api_key: str) -> None:
        for observer in self.observers:
            observer.session_ended(session_id, api_key)
