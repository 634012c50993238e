"""The store's schema history, as Alembic revisions (``versions/``), applied by :func:`upgrade`.

Every schema change is a new revision; ``Store.open()`` upgrades the database in place to the
newest one at start-up, so an existing data directory or PostgreSQL database keeps its rows.
A database made before the store was versioned (tables but no ``alembic_version``) is the
first revision's schema: it is stamped as such, then upgraded.
"""

from __future__ import annotations

import pathlib

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ["BASELINE", "head", "upgrade"]

#: The schema of the store before it was versioned (commit 59568f9 and earlier).
BASELINE = "0001"

_HERE = pathlib.Path(__file__).resolve().parent


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision."""
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def current(connection: sa.Connection) -> str | None:
    """The revision a database is at (None: never versioned)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: sa.Connection) -> None:
    """Bring the database on ``connection`` to the newest revision (synchronous: run it in ``run_sync``)."""
    config = _config(connection)
    if current(connection) is None and sa.inspect(connection).has_table("projects"):
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
