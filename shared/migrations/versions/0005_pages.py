"""reader pages stored as rendered bytes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 18:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pages",
        sa.Column("path", sa.String(length=600), nullable=False),
        sa.Column("story_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("etag", sa.String(length=80), nullable=True),
        sa.Column("last_modified", shared.models.UTCDateTime(), nullable=True),
        sa.Column("rendered_at", shared.models.UTCDateTime(), nullable=True),
        sa.Column("dirty_at", shared.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_pages")),
    )
    with op.batch_alter_table("pages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pages_dirty_at"), ["dirty_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pages_dirty_at"))
    op.drop_table("pages")
