"""token expiry, revocation and last use; sources and partners disabled or removed;
partner secrets sealed, with a previous secret during a rotation's grace; receipts whose
raw bytes were pruned; indexes for the retention policy

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 18:40:00

Partner secrets stored in clear until now are sealed here, with the key of
shared.crypto (NEWSROOM_SECRET_KEY, or the key generated into the data dir), and the
clear column is dropped, so no clear secret outlives the upgrade. On SQLite,
secure_delete zeroes the pages the clear values were on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.models
from shared.crypto import seal

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("PRAGMA secure_delete = ON")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("removed_at", shared.models.UTCDateTime(), nullable=True))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", shared.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", shared.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", shared.models.UTCDateTime(), nullable=True))
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_pruned_at", shared.models.UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_receipts_created_at"), ["created_at"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deliveries_created_at"), ["created_at"], unique=False)

    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret_sealed", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_sealed", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_until", shared.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("removed_at", shared.models.UTCDateTime(), nullable=True))
    partners = sa.table(
        "partners",
        sa.column("id", sa.Integer()),
        sa.column("secret", sa.Text()),
        sa.column("secret_sealed", sa.Text()),
    )
    for row in bind.execute(sa.select(partners.c.id, partners.c.secret)).all():
        bind.execute(
            partners.update().where(partners.c.id == row.id).values(secret_sealed=seal(row.secret), secret="")
        )
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.alter_column("secret_sealed", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("secret")


def downgrade() -> None:
    from shared.crypto import unseal

    bind = op.get_bind()
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret", sa.Text(), nullable=True))
    partners = sa.table(
        "partners",
        sa.column("id", sa.Integer()),
        sa.column("secret", sa.Text()),
        sa.column("secret_sealed", sa.Text()),
    )
    for row in bind.execute(sa.select(partners.c.id, partners.c.secret_sealed)).all():
        bind.execute(
            partners.update().where(partners.c.id == row.id).values(secret=unseal(row.secret_sealed))
        )
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.alter_column("secret", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("removed_at")
        batch_op.drop_column("previous_secret_until")
        batch_op.drop_column("previous_secret_sealed")
        batch_op.drop_column("secret_sealed")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_created_at"))
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_receipts_created_at"))
        batch_op.drop_column("body_pruned_at")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("removed_at")
        batch_op.drop_column("enabled")
