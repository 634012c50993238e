from __future__ import annotations

import pathlib

import pytest

from salon.errors import ConflictError, InvalidRequestError, NotFoundError
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


async def test_rotating_a_secret_keeps_the_old_one_for_the_grace_period_only(tmp_path: pathlib.Path) -> None:
    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        project = await store.create_project("p")
        assert project.valid_secrets() == (project.api_secret,)
        assert project.api_secret not in repr(project)
        rotated = await store.rotate_secret(project.api_key, grace=300)
        assert rotated.api_secret != project.api_secret and rotated.previous_secret == project.api_secret
        assert rotated.previous_secret_expires_at is not None
        expires = rotated.previous_secret_expires_at
        assert rotated.valid_secrets(expires - 1) == (rotated.api_secret, project.api_secret)
        assert rotated.valid_secrets(expires) == (rotated.api_secret,)
        assert project.api_secret not in repr(rotated) and rotated.api_secret not in repr(rotated)
        revoked = await store.rotate_secret(project.api_key, grace=0)
        assert revoked.valid_secrets() == (revoked.api_secret,) and revoked.previous_secret is None
        with pytest.raises(NotFoundError):
            await store.rotate_secret("nope", grace=1)
    finally:
        await store.close()


async def test_deleting_a_project_deletes_its_sessions_and_nothing_else(tmp_path: pathlib.Path) -> None:
    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        doomed, kept = await store.create_project("doomed"), await store.create_project("kept")
        for project, session_id in ((doomed, "1_doomed"), (kept, "1_kept")):
            await store.create_session(
                project.api_key,
                session_id,
                media_mode="routed",
                archive_mode="manual",
                location="",
                e2ee=False,
            )
        await store.delete_project(doomed.api_key)
        assert await store.get_project(doomed.api_key) is None and await store.get_session("1_doomed") is None
        assert await store.get_project(kept.api_key) == kept and await store.get_session("1_kept") is not None
        with pytest.raises(NotFoundError):
            await store.delete_project(doomed.api_key)
    finally:
        await store.close()
