"""metric counts kept by triggers, so that a /metrics scrape never counts over growing tables

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 18:45:00

Every insert, status change (and, for stories, delete) of a receipt, story or delivery
appends a row to ``metric_deltas`` from a trigger, in the same transaction as the change,
whatever statement made it (ORM, bulk UPDATE, upsert). A scrape folds the deltas into
``metric_totals`` and reads the totals: its cost follows the changes since the last
scrape, not the size of the tables. Deleting receipts or deliveries (pruning) adds no
delta, so counters never go backwards.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (table, metric, owner column, label column, the columns whose change moves a count, count deletes)
COUNTED = (
    ("receipts", "received", "source_id", "COALESCE({row}.format, 'unknown')", "status, format, item_count",
     False),
    ("stories", "stories", "0", "''", "status", True),
    ("deliveries", "deliveries", "partner_id", "''", "status", False),
)


def _values(table: str, metric: str, owner: str, label: str, row: str, sign: str) -> str:
    owner_sql = owner if owner == "0" else f"{row}.{owner}"
    items = f"{sign}{row}.item_count" if table == "receipts" else "0"
    values = f"'{metric}', {owner_sql}, {label.format(row=row)}, {row}.status, {sign}1, {items}"
    # Built from the constants above only.
    return f"INSERT INTO metric_deltas (metric, owner_id, label, status, count, items) VALUES ({values})"  # noqa: S608


def _changed(columns: str, *, postgresql: bool) -> str:
    differs = "IS DISTINCT FROM" if postgresql else "IS NOT"
    return " OR ".join(f"OLD.{c.strip()} {differs} NEW.{c.strip()}" for c in columns.split(","))


def upgrade() -> None:
    op.create_table(
        "metric_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("metric", sa.String(20), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
    )
    op.create_table(
        "metric_totals",
        sa.Column("metric", sa.String(20), primary_key=True),
        sa.Column("owner_id", sa.Integer(), primary_key=True),
        sa.Column("label", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(20), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, metric, owner, label, columns, count_deletes in COUNTED:
        insert_new = _values(table, metric, owner, label, "NEW", "")
        insert_old = _values(table, metric, owner, label, "OLD", "-")
        changed = _changed(columns, postgresql=postgresql)
        if postgresql:
            op.execute(f"""
                CREATE FUNCTION newsroom_count_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP IN ('UPDATE', 'DELETE') THEN {insert_old}; END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') THEN {insert_new}; END IF;
                    RETURN NULL;
                END $$""")
            run = f"FOR EACH ROW EXECUTE FUNCTION newsroom_count_{table}()"
            op.execute(f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} {run}")
            op.execute(
                f"CREATE TRIGGER {table}_count_update AFTER UPDATE OF {columns} ON {table} "
                f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION newsroom_count_{table}()"
            )
            if count_deletes:
                op.execute(f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} {run}")
        else:
            op.execute(f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} BEGIN {insert_new}; END")
            op.execute(f"CREATE TRIGGER {table}_count_update AFTER UPDATE OF {columns} ON {table} "
                       f"WHEN {changed} BEGIN {insert_old}; {insert_new}; END")
            if count_deletes:
                op.execute(
                    f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} BEGIN {insert_old}; END"
                )
    # What is there already, counted once.
    op.execute(
        "INSERT INTO metric_totals (metric, owner_id, label, status, count, items) "
        "SELECT 'received', source_id, COALESCE(format, 'unknown'), status, COUNT(*), "
        "COALESCE(SUM(item_count), 0) FROM receipts GROUP BY source_id, COALESCE(format, 'unknown'), status"
    )
    op.execute(
        "INSERT INTO metric_totals (metric, owner_id, label, status, count, items) "
        "SELECT 'stories', 0, '', status, COUNT(*), 0 FROM stories GROUP BY status"
    )
    op.execute(
        "INSERT INTO metric_totals (metric, owner_id, label, status, count, items) "
        "SELECT 'deliveries', partner_id, '', status, COUNT(*), 0 FROM deliveries GROUP BY partner_id, status"
    )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, *_ in COUNTED:
        for event in ("insert", "update", "delete"):
            op.execute(
                f"DROP TRIGGER IF EXISTS {table}_count_{event}" + (f" ON {table}" if postgresql else "")
            )
        if postgresql:
            op.execute(f"DROP FUNCTION IF EXISTS newsroom_count_{table}()")
    op.drop_table("metric_totals")
    op.drop_table("metric_deltas")
