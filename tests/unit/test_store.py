from __future__ import annotations

import contextlib
import pathlib
import sqlite3

import pytest

from salon.errors import ConflictError, InvalidRequestError, NotFoundError
from salon.store import CallbackOutcome, NewCallback, Store, database_url_for


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


async def check_callback_outbox(store: Store) -> None:
    """The outbox's reads and writes as the dispatcher uses them (SQLite here, PostgreSQL in
    tests/functional/test_store_postgres.py)."""
    project = await store.create_project("outbox")
    await store.update_project(project.api_key, callback_url="http://127.0.0.1:9/cb")

    def new(key: str, n: int) -> NewCallback:
        return NewCallback(
            api_key=project.api_key, kind="session", order_key=key, body=f"{key}-{n}", created_at=1000
        )

    await store.add_callbacks([new("a", 0), new("b", 0), new("a", 1), new("c", 0), new("a", 2), new("b", 1)])
    assert await store.pending_callback_keys() == ["a", "b", "c"]
    heads = await store.callback_heads(["c", "a", "nothing", "a"])
    assert [(event.body, event.status) for event, _ in heads] == [("a-0", "pending"), ("c-0", "pending")]
    assert all(p is not None and p.callback_url == "http://127.0.0.1:9/cb" for _, p in heads)
    a0, c0 = (event for event, _ in heads)
    b0 = (await store.callback_heads(["b"]))[0][0]
    ahead = await store.callback_heads(["c", "a", "b", "nothing"], per_key=2)
    assert [event.body for event, _ in ahead] == ["a-0", "b-0", "a-1", "c-0", "b-1"]
    assert all(p is not None and p.api_key == project.api_key for _, p in ahead)
    await store.record_callbacks(
        [
            CallbackOutcome(a0.id, "delivered", 2000),
            CallbackOutcome(b0.id, "pending", 2000, error="HTTP 500", retry_at=5000),
            CallbackOutcome(c0.id, "given_up", 2000, error="x" * 600),
        ]
    )
    heads = await store.callback_heads(["a", "b", "c"])
    assert [(e.body, e.attempts, e.next_attempt_at, e.last_error) for e, _ in heads] == [
        ("b-0", 1, 5000, "HTTP 500"),  # still the head of b: b-1 waits behind it
        ("a-1", 0, 1000, ""),
    ]
    assert await store.pending_callback_keys() == ["b", "a"]
    assert await store.callback_counts() == {"pending": 4, "delivered": 1, "given_up": 1}
    given_up = (await store.callbacks("given_up"))[0]
    assert (given_up.body, given_up.attempts, given_up.finished_at, len(given_up.last_error)) == (
        "c-0",
        1,
        2000,
        500,
    )
    delivered = (await store.callbacks("delivered"))[0]
    assert (delivered.body, delivered.finished_at, delivered.next_attempt_at) == ("a-0", 2000, 1000)
    # A deleted project's pending callbacks go with it.
    await store.delete_project(project.api_key)
    assert await store.callback_heads(["a", "b"]) == [] and await store.pending_callback_keys() == []


async def test_the_callback_outbox_gives_each_order_key_its_oldest_pending_callback(
    tmp_path: pathlib.Path,
) -> None:
    store = Store(database_url_for(tmp_path))
    await store.open()
    try:
        await check_callback_outbox(store)
    finally:
        await store.close()
    # The embedded database runs in write-ahead-log mode (outbox writes do not wait on reads).
    with contextlib.closing(sqlite3.connect(tmp_path / "salon.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
