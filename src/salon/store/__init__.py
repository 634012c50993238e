"""Persistence of projects and sessions.

:class:`Store` is the one interface the server uses. It is backed by SQLAlchemy, so the same
code runs on the embedded default (SQLite in the data directory) and on PostgreSQL when the
server is given a ``postgresql://`` URL.
"""

from salon.store.store import (
    ArchiveRecord,
    CallbackEvent,
    CallbackOutcome,
    NewCallback,
    Project,
    SessionRecord,
    Store,
    database_url_for,
)

__all__ = [
    "ArchiveRecord",
    "CallbackEvent",
    "CallbackOutcome",
    "NewCallback",
    "Project",
    "SessionRecord",
    "Store",
    "database_url_for",
]
