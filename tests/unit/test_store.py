from __future__ import annotations

import pathlib

import pytest

from salon.errors import ConflictError, InvalidRequestError
from salon.store import Store, database_url_for


async def test_projects_and_sessions_persist_across_reopen(tmp_path: pathlib.Path) -> None:
    store = Store(database_url_for(tmp_path))
    await store.open()
    project = await store.create_project("demo")
    await store.create_session(
        project.api_key, "1_abc", media_mode="routed", archive_mode="manual", location="", e2ee=False
    )
    await store.close()

    reopened = Store(database_url_for(tmp_path))
    await reopened.open()
    assert await reopened.get_project(project.api_key) == project
    record = await reopened.get_session("1_abc")
    assert record is not None and record.api_key == project.api_key and record.media_mode == "routed"
    assert [p.api_key for p in await reopened.list_projects()] == [project.api_key]
    assert await reopened.count_sessions(project.api_key) == 1
    await reopened.close()


async def test_duplicate_and_invalid_projects_are_refused(tmp_path: pathlib.Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/x.db")
    await store.open()
    await store.create_project(api_key="1234", api_secret="s" * 20)
    with pytest.raises(ConflictError):
        await store.create_project(api_key="1234", api_secret="s" * 20)
    with pytest.raises(InvalidRequestError):
        await store.create_project(api_key="12~34", api_secret="s" * 20)
    with pytest.raises(InvalidRequestError):
        await store.create_project(api_key="5678", api_secret="short")
    assert await store.get_project("nope") is None
    assert await store.get_session("nope") is None
    await store.close()
