"""SQLAlchemy-backed store of projects and sessions."""

from __future__ import annotations

import datetime
import pathlib
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from salon.errors import ConflictError, InvalidRequestError, NotFoundError, ServerError
from salon.redact import register_secret
from salon.store import migrations

__all__ = [
    "ArchiveRecord",
    "CallbackEvent",
    "CallbackOutcome",
    "NewCallback",
    "Project",
    "SessionRecord",
    "Store",
    "check_public_key",
    "database_url_for",
]

metadata = sa.MetaData()

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("api_key", sa.String(64), primary_key=True),
    sa.Column("api_secret", sa.String(128), nullable=False),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Where session-monitoring and archive callbacks go, and the secret that signs them.
    sa.Column("callback_url", sa.String(2048), nullable=True),
    sa.Column("archive_callback_url", sa.String(2048), nullable=True),
    sa.Column("signature_secret", sa.String(256), nullable=True),
    # After `salon project rotate-secret`: the old secret, still valid until the time (ms) after.
    sa.Column("previous_secret", sa.String(128), nullable=True),
    sa.Column("previous_secret_expires_at", sa.BigInteger, nullable=True),
    # A Vonage application: the PEM RSA public key its RS256 JWTs are verified with.
    sa.Column("public_key", sa.Text, nullable=True),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.String(255), primary_key=True),
    sa.Column("api_key", sa.String(64), sa.ForeignKey("projects.api_key"), nullable=False, index=True),
    sa.Column("media_mode", sa.String(16), nullable=False),
    sa.Column("archive_mode", sa.String(16), nullable=False),
    sa.Column("location", sa.String(64), nullable=False, default=""),
    sa.Column("e2ee", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # archiveMode always: the name and resolution of the archive started automatically.
    sa.Column("archive_name", sa.String(255), nullable=True),
    sa.Column("archive_resolution", sa.String(16), nullable=True),
)

#: Archives (``salon.archive``): one row per archive, written before its start is
#: acknowledged and at every status change. ``layout`` and ``streams`` are JSON;
#: ``location`` is where storage keeps the archive's file (None until it is stored).
archives = sa.Table(
    "archives",
    metadata,
    sa.Column("archive_id", sa.String(36), primary_key=True),
    sa.Column("api_key", sa.String(64), nullable=False),
    sa.Column("session_id", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("stopped_at", sa.BigInteger, nullable=True),
    sa.Column("duration", sa.Integer, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("output_mode", sa.String(16), nullable=False),
    sa.Column("stream_mode", sa.String(16), nullable=False),
    sa.Column("has_audio", sa.Boolean, nullable=False),
    sa.Column("has_video", sa.Boolean, nullable=False),
    sa.Column("resolution", sa.String(16), nullable=True),
    sa.Column("layout", sa.Text, nullable=False),
    sa.Column("streams", sa.Text, nullable=False),
    sa.Column("multi_archive_tag", sa.String(255), nullable=True),
    sa.Column("location", sa.String(2048), nullable=True),
    sa.Index("ix_archives_project", "api_key", "created_at"),
    sa.Index("ix_archives_session", "session_id", "status"),
    sa.Index("ix_archives_status", "status"),
)


#: The durable outbox of callbacks (``salon.callbacks``): a row is written before it is sent,
#: and stays until it is delivered or given up. ``order_key`` (a session ID, or an archive ID)
#: orders delivery: only the oldest pending row of a key is sent at a time.
callback_events = sa.Table(
    "callback_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("api_key", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("order_key", sa.String(255), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.String(500), nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Index("ix_callback_events_pending", "status", "order_key", "id"),
)


@dataclass(frozen=True, slots=True)
class Project:
    """A project: an API key and the secret that signs its tokens and REST calls.

    ``callback_url`` receives session-monitoring callbacks, ``archive_callback_url`` archive
    status callbacks (``callback_url`` when unset); ``signature_secret`` signs both. After a
    secret rotation ``previous_secret`` is still accepted until ``previous_secret_expires_at``
    (ms since the epoch). No secret is ever part of the ``repr``.

    A Vonage *application* is a project with a ``public_key`` (PEM, RSA): its ``api_key`` is
    the application id (a UUID), and its REST calls and client tokens are RS256 JWTs signed
    with the matching private key, which salon never stores. Its ``api_secret`` is random,
    never shown and never accepted (HS256 JWTs of an application are refused).
    """

    api_key: str
    api_secret: str = field(repr=False)
    name: str
    created_at: int
    callback_url: str | None = None
    archive_callback_url: str | None = None
    signature_secret: str | None = field(default=None, repr=False)
    previous_secret: str | None = field(default=None, repr=False)
    previous_secret_expires_at: int | None = None
    public_key: str | None = field(default=None, repr=False)

    def valid_secrets(self, now_ms: int | None = None) -> tuple[str, ...]:
        """The secrets a JWT or token of this project may be signed with, now: the current
        one, and the previous one until its grace period ends."""
        now_ms = _now_ms() if now_ms is None else now_ms
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires is not None and now_ms < expires:
            return (self.api_secret, self.previous_secret)
        return (self.api_secret,)

    @property
    def is_application(self) -> bool:
        return self.public_key is not None


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One row of the callback outbox."""

    id: int
    api_key: str
    kind: str
    order_key: str
    body: str
    created_at: int
    status: str
    attempts: int
    next_attempt_at: int
    last_error: str
    finished_at: int | None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as created through ``POST /session/create``."""

    session_id: str
    api_key: str
    media_mode: str
    archive_mode: str
    location: str
    e2ee: bool
    created_at: int
    archive_name: str | None = None
    archive_resolution: str | None = None


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """An archive as stored (:mod:`salon.archive.models` gives it its OpenTok JSON)."""

    archive_id: str
    api_key: str
    session_id: str
    name: str | None
    status: str
    reason: str
    created_at: int
    updated_at: int
    stopped_at: int | None
    duration: int
    size: int
    output_mode: str
    stream_mode: str
    has_audio: bool
    has_video: bool
    resolution: str | None
    layout: str
    streams: str
    multi_archive_tag: str | None
    location: str | None


@dataclass(frozen=True, slots=True)
class NewCallback:
    """A callback to put in the outbox."""

    api_key: str
    kind: str  # "session" (session monitoring) or "archive"
    order_key: str
    body: str
    created_at: int


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    """What one delivery attempt of the callback ``id`` came to (see :meth:`Store.record_callbacks`)."""

    id: int
    status: str  # "delivered", "given_up", or "pending" (tried again at retry_at)
    now: int
    error: str = ""
    retry_at: int | None = None


def check_public_key(pem: str) -> str:
    """An application's public key, checked: PEM, RSA, 2048 to 8192 bits; returned as PEM.

    :raises InvalidRequestError: otherwise.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidRequestError("the public key is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidRequestError("the public key must be an RSA key (RS256)")
    if not 2048 <= key.key_size <= 8192:
        raise InvalidRequestError("the RSA public key must be 2048 to 8192 bits")
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


#: The longest grace period of an old secret after a rotation, seconds (7 days).
MAX_GRACE = 7 * 24 * 3600


def database_url_for(data_dir: pathlib.Path) -> str:
    """The embedded default: a SQLite file in the data directory."""
    return f"sqlite+aiosqlite:///{data_dir / 'salon.sqlite3'}"


def _async_url(url: str) -> str:
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def _now_ms() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


class Store:
    """Projects and sessions, persisted in a SQL database.

    Errors of the database driver are translated into :class:`~salon.errors.ServerError`;
    a duplicate key is a :class:`~salon.errors.ConflictError`.
    """

    def __init__(self, url: str) -> None:
        self.url = _async_url(url)
        # hide_parameters: SQL logging (INFO) never shows the values, e.g. an API secret.
        self._engine: AsyncEngine = create_async_engine(self.url, hide_parameters=True)
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine.sync_engine, "connect", _sqlite_wal)

    async def open(self) -> None:
        """Create the tables, or upgrade an existing database in place to the newest schema."""
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(migrations.upgrade)
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot open the database: {exc.__class__.__name__}") from exc

    async def close(self) -> None:
        await self._engine.dispose()

    async def create_application(
        self, name: str, public_key: str, *, application_id: str | None = None
    ) -> Project:
        """Register a Vonage application: an id (a new UUID unless given) and an RSA public key.

        :raises InvalidRequestError: if ``public_key`` is not a PEM RSA public key of 2048
            to 8192 bits.
        """
        public_key = check_public_key(public_key)
        if application_id is None:
            application_id = str(uuid.uuid4())
        return await self.create_project(
            name, api_key=application_id, api_secret=secrets.token_hex(32), public_key=public_key
        )

    async def create_project(
        self,
        name: str = "",
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        public_key: str | None = None,
    ) -> Project:
        if api_key is None:
            api_key = str(secrets.randbelow(90_000_000) + 10_000_000)
        if api_secret is None:
            api_secret = secrets.token_hex(20)
        if not api_key or "~" in api_key or "/" in api_key or len(api_key) > 64:
            raise InvalidRequestError("an API key must be 1 to 64 characters, without '~' or '/'")
        if len(api_secret) < 16:
            raise InvalidRequestError("an API secret must be at least 16 characters")
        register_secret(api_secret)
        project = Project(
            api_key=api_key, api_secret=api_secret, name=name, created_at=_now_ms(), public_key=public_key
        )
        _check_fits(projects, project)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.insert(projects).values(**_as_dict(project)))
        except IntegrityError as exc:
            raise ConflictError(f"a project with API key or application id {api_key} exists already") from exc
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot store the project: {exc.__class__.__name__}") from exc
        return project

    async def get_project(self, api_key: str) -> Project | None:
        if "\x00" in api_key:  # never stored; PostgreSQL refuses NUL in text
            return None
        rows = await self._select(sa.select(projects).where(projects.c.api_key == api_key))
        return _project(rows[0]) if rows else None

    async def list_projects(self) -> list[Project]:
        rows = await self._select(sa.select(projects).order_by(projects.c.created_at))
        return [_project(row) for row in rows]

    async def create_session(
        self,
        api_key: str,
        session_id: str,
        *,
        media_mode: str,
        archive_mode: str,
        location: str,
        e2ee: bool,
        archive_name: str | None = None,
        archive_resolution: str | None = None,
    ) -> SessionRecord:
        record = SessionRecord(
            session_id=session_id,
            api_key=api_key,
            media_mode=media_mode,
            archive_mode=archive_mode,
            location=location,
            e2ee=e2ee,
            created_at=_now_ms(),
            archive_name=archive_name,
            archive_resolution=archive_resolution,
        )
        _check_fits(sessions, record)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.insert(sessions).values(**_as_dict(record)))
        except IntegrityError as exc:
            raise ConflictError("the session exists already") from exc
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot store the session: {exc.__class__.__name__}") from exc
        return record

    async def get_session(self, session_id: str) -> SessionRecord | None:
        if "\x00" in session_id:  # never stored; PostgreSQL refuses NUL in text
            return None
        rows = await self._select(sa.select(sessions).where(sessions.c.session_id == session_id))
        return SessionRecord(**rows[0]) if rows else None

    async def count_sessions(self, api_key: str) -> int:
        if "\x00" in api_key:  # never stored; PostgreSQL refuses NUL in text
            return 0
        query = sa.select(sa.func.count()).select_from(sessions).where(sessions.c.api_key == api_key)
        try:
            async with self._engine.connect() as conn:
                return int((await conn.execute(query)).scalar_one())
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot read the database: {exc.__class__.__name__}") from exc

    async def update_project(
        self,
        api_key: str,
        *,
        callback_url: str | None = None,
        archive_callback_url: str | None = None,
        signature_secret: str | None = None,
    ) -> Project:
        """Set a project's callback settings (None leaves one as it is, "" clears it)."""
        values = {
            name: value or None
            for name, value in (
                ("callback_url", callback_url),
                ("archive_callback_url", archive_callback_url),
                ("signature_secret", signature_secret),
            )
            if value is not None
        }
        if signature_secret and len(signature_secret) < 32:
            raise InvalidRequestError(
                "a signature secret must be at least 32 characters (it keys HMAC-SHA256)"
            )
        for name, value in values.items():
            length = getattr(projects.c[name].type, "length", None)
            if value is not None and length is not None and len(value) > length:
                raise InvalidRequestError(f"{name} must be at most {length} characters")
        if values:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        sa.update(projects).where(projects.c.api_key == api_key).values(**values)
                    )
            except SQLAlchemyError as exc:
                raise ServerError(f"cannot update the project: {exc.__class__.__name__}") from exc
        project = await self.get_project(api_key)
        if project is None:
            raise NotFoundError(f"no project {api_key}")
        return project

    async def rotate_secret(self, api_key: str, *, grace: float, api_secret: str | None = None) -> Project:
        """Give a project a new API secret; the old one stays valid for ``grace`` seconds."""
        if not 0 <= grace <= MAX_GRACE:
            raise InvalidRequestError(f"the grace period must be 0 to {MAX_GRACE} seconds")
        new_secret = api_secret or secrets.token_hex(20)
        if len(new_secret) < 16:
            raise InvalidRequestError("an API secret must be at least 16 characters")
        old = await self.get_project(api_key)
        if old is None:
            raise NotFoundError(f"no project {api_key}")
        values: dict[str, object] = {"api_secret": new_secret}
        if grace > 0:
            values["previous_secret"] = old.api_secret
            values["previous_secret_expires_at"] = _now_ms() + int(grace * 1000)
        else:
            values["previous_secret"] = values["previous_secret_expires_at"] = None
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.update(projects).where(projects.c.api_key == api_key).values(**values))
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot update the project: {exc.__class__.__name__}") from exc
        project = await self.get_project(api_key)
        if project is None:
            raise NotFoundError(f"no project {api_key}")
        return project

    async def delete_project(self, api_key: str) -> None:
        """Delete a project with its sessions and pending callbacks; its secrets stop working."""
        if "\x00" in api_key:
            raise NotFoundError(f"no project {api_key!r}")
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.delete(sessions).where(sessions.c.api_key == api_key))
                result = await conn.execute(sa.delete(projects).where(projects.c.api_key == api_key))
                if result.rowcount == 0:  # rolls the transaction back
                    raise NotFoundError(f"no project {api_key}")
                await conn.execute(
                    sa.delete(callback_events).where(
                        callback_events.c.api_key == api_key, callback_events.c.status == "pending"
                    )
                )
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot delete the project: {exc.__class__.__name__}") from exc

    # -- archives (salon.archive) ------------------------------------------------------------

    async def create_archive(self, record: ArchiveRecord) -> None:
        _check_fits(archives, record)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.insert(archives).values(**_as_dict(record)))
        except IntegrityError as exc:
            raise ConflictError("the archive exists already") from exc
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot store the archive: {exc.__class__.__name__}") from exc

    async def update_archive(self, record: ArchiveRecord) -> None:
        """Write every field of an archive (its ``archive_id`` names the row)."""
        _check_fits(archives, record)
        values = _as_dict(record)
        del values["archive_id"]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.update(archives).where(archives.c.archive_id == record.archive_id).values(**values)
                )
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot update the archive: {exc.__class__.__name__}") from exc

    async def get_archive(self, archive_id: str) -> ArchiveRecord | None:
        if "\x00" in archive_id or len(archive_id) > 36:  # never stored
            return None
        rows = await self._select(sa.select(archives).where(archives.c.archive_id == archive_id))
        return ArchiveRecord(**rows[0]) if rows else None

    async def list_archives(
        self, api_key: str, *, session_id: str | None = None, offset: int = 0, count: int = 50
    ) -> tuple[int, list[ArchiveRecord]]:
        """How many archives a project has (of one session, if given), and ``count`` of them
        from ``offset``, newest first."""
        if "\x00" in api_key or (session_id is not None and "\x00" in session_id):
            return 0, []
        where = [archives.c.api_key == api_key]
        if session_id is not None:
            where.append(archives.c.session_id == session_id)
        total_query = sa.select(sa.func.count()).select_from(archives).where(*where)
        query = (
            sa.select(archives)
            .where(*where)
            .order_by(archives.c.created_at.desc(), archives.c.archive_id.desc())
            .offset(offset)
            .limit(count)
        )
        try:
            async with self._engine.connect() as conn:
                total = int((await conn.execute(total_query)).scalar_one())
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot read the database: {exc.__class__.__name__}") from exc
        return total, [ArchiveRecord(**row) for row in await self._select(query)]

    async def archives_in(
        self, statuses: tuple[str, ...], *, created_before: int | None = None
    ) -> list[ArchiveRecord]:
        """Every archive in one of these statuses (created before a time, if given), oldest first."""
        query = sa.select(archives).where(archives.c.status.in_(statuses))
        if created_before is not None:
            query = query.where(archives.c.created_at < created_before)
        return [ArchiveRecord(**row) for row in await self._select(query.order_by(archives.c.created_at))]

    # -- the callback outbox (salon.callbacks) --------------------------------------------

    async def add_callbacks(self, callbacks: list[NewCallback]) -> None:
        """Put callbacks in the outbox, in order, in one transaction."""
        if not callbacks:
            return
        rows = [
            {
                "api_key": c.api_key,
                "kind": c.kind,
                "order_key": c.order_key,
                "body": c.body,
                "created_at": c.created_at,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": c.created_at,
                "last_error": "",
            }
            for c in callbacks
        ]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.insert(callback_events), rows)
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot store callbacks: {exc.__class__.__name__}") from exc

    async def pending_callback_keys(self) -> list[str]:
        """The order keys that have pending callbacks, the one with the oldest first (read once
        when delivery starts; it reads every pending row's index entry)."""
        query = (
            sa.select(callback_events.c.order_key)
            .where(callback_events.c.status == "pending")
            .group_by(callback_events.c.order_key)
            .order_by(sa.func.min(callback_events.c.id))
        )
        return [str(row["order_key"]) for row in await self._select(query)]

    async def callback_heads(
        self, order_keys: list[str], per_key: int = 1
    ) -> list[tuple[CallbackEvent, Project | None]]:
        """The ``per_key`` oldest pending callbacks of each of these order keys (fewer, or none,
        for a key that has fewer), due or not, each with its project (None when it was
        deleted), oldest first.

        Each key is one ordered range read on ``ix_callback_events_pending`` (status,
        order_key, id), so the cost does not grow with the number of pending callbacks.
        """
        if not order_keys or per_key < 1:
            return []
        c = callback_events.c
        project_columns = [column.label(f"project_{column.name}") for column in projects.c]
        joined = callback_events.outerjoin(projects, projects.c.api_key == c.api_key)
        query: sa.Select[Any] | sa.CompoundSelect[Any]
        if per_key == 1:
            heads = [
                sa.select(sa.func.min(c.id))
                .where(c.status == "pending", c.order_key == key)
                .scalar_subquery()
                for key in dict.fromkeys(order_keys)
            ]
            query = sa.select(callback_events, *project_columns).select_from(joined).where(c.id.in_(heads))
        else:
            firsts = [
                sa.select(callback_events, *project_columns)
                .select_from(joined)
                .where(c.status == "pending", c.order_key == key)
                .order_by(c.id)
                .limit(per_key)
                .subquery()
                for key in dict.fromkeys(order_keys)
            ]
            query = sa.union_all(*(sa.select(first) for first in firsts))
        found: list[tuple[CallbackEvent, Project | None]] = []
        for row in await self._select(query):
            project = {column.name: row.pop(f"project_{column.name}") for column in projects.c}
            found.append((CallbackEvent(**row), None if project["api_key"] is None else _project(project)))
        found.sort(key=lambda item: item[0].id)
        return found

    async def claim_callback(self, event: CallbackEvent, lease_until: int) -> bool:
        """Take the delivery attempt of ``event`` (as read: its attempts and next attempt time)
        for this server until ``lease_until`` (ms): one atomic compare-and-set, so of the nodes
        of a cluster sharing the outbox exactly one wins each attempt. The lease is the row's
        next attempt time: if the winner dies before recording the outcome, the callback is due
        again (to any node) when it ends. False: another node took it (or it is finished)."""
        c = callback_events.c
        statement = (
            sa.update(callback_events)
            .where(
                c.id == event.id,
                c.status == "pending",
                c.attempts == event.attempts,
                c.next_attempt_at == event.next_attempt_at,
            )
            .values(next_attempt_at=lease_until)
        )
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot claim a callback: {exc.__class__.__name__}") from exc
        return bool(result.rowcount == 1)

    async def record_callbacks(self, outcomes: list[CallbackOutcome]) -> None:
        """Record delivery attempts, in one transaction: each one counts an attempt, and the
        callback is ``delivered``, ``given_up`` (both finished at ``now``), or still
        ``pending`` and tried again at ``retry_at``."""
        if not outcomes:
            return
        c = callback_events.c
        statement = (
            sa.update(callback_events)
            .where(c.id == sa.bindparam("b_id"))
            .values(
                status=sa.bindparam("b_status"),
                finished_at=sa.bindparam("b_finished_at", type_=sa.BigInteger),
                next_attempt_at=sa.func.coalesce(
                    sa.bindparam("b_retry_at", type_=sa.BigInteger), c.next_attempt_at
                ),
                last_error=sa.bindparam("b_error"),
                attempts=c.attempts + 1,
            )
        )
        rows = [
            {
                "b_id": o.id,
                "b_status": o.status,
                "b_finished_at": None if o.status == "pending" else o.now,
                "b_retry_at": o.retry_at if o.status == "pending" else None,
                "b_error": o.error[:500],
            }
            for o in outcomes
        ]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(statement, rows)
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot update callbacks: {exc.__class__.__name__}") from exc

    async def finish_callback(self, event_id: int, *, status: str, now: int, error: str = "") -> None:
        """A callback was delivered (``delivered``) or will never be (``given_up``)."""
        await self.record_callbacks([CallbackOutcome(event_id, status, now, error=error)])

    async def retry_callback(self, event_id: int, *, at: int, error: str) -> None:
        """A delivery attempt failed: try again at ``at`` (ms)."""
        await self.record_callbacks(
            [CallbackOutcome(event_id, "pending", _now_ms(), error=error, retry_at=at)]
        )

    async def callback_counts(self) -> dict[str, int]:
        """How many callbacks are pending, delivered and given up."""
        query = sa.select(callback_events.c.status, sa.func.count()).group_by(callback_events.c.status)
        try:
            async with self._engine.connect() as conn:
                result = await conn.execute(query)
                counts = {str(status): int(count) for status, count in result}
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot read the database: {exc.__class__.__name__}") from exc
        return {status: counts.get(status, 0) for status in ("pending", "delivered", "given_up")}

    async def callbacks(self, status: str, limit: int = 100) -> list[CallbackEvent]:
        """Callbacks of one status, newest first."""
        query = (
            sa.select(callback_events)
            .where(callback_events.c.status == status)
            .order_by(callback_events.c.id.desc())
            .limit(limit)
        )
        return [CallbackEvent(**row) for row in await self._select(query)]

    async def _select(self, query: sa.Select[Any] | sa.CompoundSelect[Any]) -> list[dict[str, Any]]:
        try:
            async with self._engine.connect() as conn:
                result = await conn.execute(query)
                return [dict(row._mapping) for row in result]
        except SQLAlchemyError as exc:
            raise ServerError(f"cannot read the database: {exc.__class__.__name__}") from exc


def _sqlite_wal(dbapi_connection: Any, connection_record: object) -> None:
    """SQLite in write-ahead-log mode: readers and the writer no longer block each other, and
    a commit is one append to the log (still synced to disk before it returns: FULL)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _project(row: dict[str, Any]) -> Project:
    """A project read from the store; its secrets are never logged from now on."""
    project = Project(**row)
    register_secret(project.api_secret, project.previous_secret, project.signature_secret)
    return project


def _check_fits(table: sa.Table, value: Project | SessionRecord | ArchiveRecord) -> None:
    """Refuse what PostgreSQL would refuse (SQLite stores it): NUL and over-long strings."""
    for name, item in _as_dict(value).items():
        if not isinstance(item, str):
            continue
        length = getattr(table.c[name].type, "length", None)
        if length is not None and len(item) > length:
            raise InvalidRequestError(f"{name} must be at most {length} characters")
        if "\x00" in item:
            raise InvalidRequestError(f"{name} must not contain NUL characters")


def _as_dict(value: Project | SessionRecord | ArchiveRecord) -> dict[str, object]:
    return {name: getattr(value, name) for name in value.__slots__}
