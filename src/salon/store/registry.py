"""A read-through cache over the store for the lookups on every request."""

from __future__ import annotations

from salon.store.store import Project, SessionRecord, Store

__all__ = ["Registry"]


class Registry:
    """Projects and sessions by key, cached after the first successful lookup.

    Projects and sessions are never deleted, so positive answers can be cached for the life
    of the process; negative answers are not cached (another process, e.g. ``salon project
    create``, may add the row).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._projects: dict[str, Project] = {}
        self._sessions: dict[str, SessionRecord] = {}

    async def project(self, api_key: str) -> Project | None:
        project = self._projects.get(api_key)
        if project is None:
            project = await self.store.get_project(api_key)
            if project is not None:
                self._projects[api_key] = project
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
        self._projects[project.api_key] = project
