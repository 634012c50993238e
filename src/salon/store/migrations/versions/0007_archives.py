"""Archives: the archives table, and a session's archiveName / archiveResolution (archiveMode always).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("archive_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("archive_resolution", sa.String(16), nullable=True))
    op.create_table(
        "archives",
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
    )
    op.create_index("ix_archives_project", "archives", ["api_key", "created_at"])
    op.create_index("ix_archives_session", "archives", ["session_id", "status"])
    op.create_index("ix_archives_status", "archives", ["status"])


def downgrade() -> None:
    op.drop_index("ix_archives_status", "archives")
    op.drop_index("ix_archives_session", "archives")
    op.drop_index("ix_archives_project", "archives")
    op.drop_table("archives")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("archive_resolution")
        batch.drop_column("archive_name")
