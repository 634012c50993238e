"""A read-through cache over the store for the lookups on every request."""

from __future__ import annotations

import time

from salon.store.store import Project, SessionRecord, Store

__all__ = ["PROJECT_TTL", "Registry"]

#: How long a project read from the store is trusted, seconds. The store is the truth: a
#: project deleted, or its secret rotated, by ``salon project`` in another process is seen by
#: a running server within this time.
PROJECT_TTL = 1.0


class Registry:
    """Projects and sessions by key, cached after a successful lookup.

    A project is cached for at most ``project_ttl`` seconds, then read again, so a deletion or
    a secret rotation made elsewhere takes effect (connections already live stay). A session
    never changes while its project exists, so it is cached for the life of the process; when
    its project is found gone, its sessions are dropped from the cache. Negative answers are
    not cached (another process, e.g. ``salon project create``, may add the row).
    """

    def __init__(self, store: Store, *, project_ttl: float = PROJECT_TTL) -> None:
        self.store = store
        self.project_ttl = project_ttl
        self._projects: dict[str, tuple[Project, float]] = {}
        self._sessions: dict[str, SessionRecord] = {}

    async def project(self, api_key: str) -> Project | None:
        cached = self._projects.get(api_key)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.project_ttl:
            return cached[0]
        project = await self.store.get_project(api_key)
        if project is not None:
            self._projects[api_key] = (project, now)
        elif cached is not None:
            self.forget_project(api_key)
        return project

    async def session(self, session_id: str) -> SessionRecord | None:
        record = self._sessions.get(session_id)
        if record is None:
            record = await self.store.get_session(session_id)
            if record is not None:
                self._sessions[session_id] = record
        return record

    def remember_session(self, record: SessionRecord) -> None:
        self._sessions[record.session_id] = record

    def remember_project(self, project: Project) -> None:
        self._projects[project.api_key] = (project, time.monotonic())

    def forget_project(self, api_key: str) -> None:
        """Drop a project, and its sessions, from the cache."""
        self._projects.pop(api_key, None)
        for session_id in [s for s, r in self._sessions.items() if r.api_key == api_key]:
            del self._sessions[session_id]
