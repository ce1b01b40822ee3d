"""Create or migrate the schema with Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    """Alembic's configuration, pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(revision: str = "head") -> None:
    """Bring the configured database's schema up to ``revision``."""
    from sqlalchemy.engine import make_url

    from shared.config import get_settings

    settings = get_settings()
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # SQLite makes the file, not its folder; no other database needs a folder here.
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(), revision)
    if settings.sqlalchemy_url.startswith("sqlite"):
        _checkpoint()


def _checkpoint() -> None:
    """Fold SQLite's WAL into the database file and empty it.

    A migration that rewrites secrets (0003 seals partner secrets stored in clear) leaves
    the old pages in the WAL until it is reused; emptying it leaves them nowhere.
    """
    from shared.db import get_engine

    connection = get_engine().raw_connection()
    try:
        # The driver connection runs in autocommit (shared.db), as a checkpoint must.
        connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
