"""Alembic's environment for the store: always given a connection by ``salon.store.migrations``."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the store always passes its connection
    raise RuntimeError("salon's migrations run through salon.store.migrations.upgrade()")

context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
