"""The store as it was before it was versioned: projects and sessions.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("api_key", sa.String(64), primary_key=True),
        sa.Column("api_secret", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(255), primary_key=True),
        sa.Column("api_key", sa.String(64), sa.ForeignKey("projects.api_key"), nullable=False),
        sa.Column("media_mode", sa.String(16), nullable=False),
        sa.Column("archive_mode", sa.String(16), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("e2ee", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sessions_api_key", "sessions", ["api_key"])


def downgrade() -> None:
    op.drop_index("ix_sessions_api_key", "sessions")
    op.drop_table("sessions")
    op.drop_table("projects")
