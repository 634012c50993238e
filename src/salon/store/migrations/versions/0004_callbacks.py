"""Callbacks: per-project callback URLs and signature secret, and the durable callback outbox.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("callback_url", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("archive_callback_url", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("signature_secret", sa.String(256), nullable=True))
    op.create_table(
        "callback_events",
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
    )
    op.create_index("ix_callback_events_pending", "callback_events", ["status", "order_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_callback_events_pending", "callback_events")
    op.drop_table("callback_events")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("signature_secret")
        batch.drop_column("archive_callback_url")
        batch.drop_column("callback_url")
