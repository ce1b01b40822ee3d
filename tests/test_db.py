"""How transactions end: a PostgreSQL reader's is read-only and commits, keeping prepared statements."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared.db import session_scope
from tests.helpers.support import newsroom_environment, postgres_database


@pytest.fixture
def postgresql(redis_url: str) -> object:
    databases = postgres_database()
    url = next(databases)
    with newsroom_environment({"NEWSROOM_DATABASE_URL": url, "NEWSROOM_REDIS_URL": redis_url}):
        yield url
    databases.close()


def test_a_reader_cannot_write(postgresql: object) -> None:
    with session_scope() as session:
        session.execute(text("CREATE TABLE notes (id integer)"))
    with pytest.raises(DBAPIError, match="read-only transaction"), session_scope(read_only=True) as session:
        session.execute(text("INSERT INTO notes VALUES (1)"))
    with session_scope(read_only=True) as session:
        assert session.scalar(text("SELECT count(*) FROM notes")) == 0


def test_readers_keep_the_prepared_statements(postgresql: object) -> None:
    # psycopg prepares a statement on its fifth run on a connection, and forgets every
    # prepared statement at a ROLLBACK: readers that ended that way never kept one.
    for n in range(8):
        with session_scope(read_only=True) as session:
            assert session.scalar(text("SELECT CAST(:n AS integer) + 1"), {"n": n}) == n + 1
    with session_scope(read_only=True) as session:
        prepared = session.scalar(
            text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%+ 1%'")
        )
    assert prepared == 1


def test_stored_feeds_and_pages_are_compressed_with_lz4(postgresql: object) -> None:
    # Rewritten at every render round, each over the TOAST threshold: pglz, the default,
    # costs the server about four times lz4's CPU per store (migration 0006).
    from shared.migrate import upgrade

    upgrade()
    with session_scope(read_only=True) as session:
        methods = session.execute(
            text(
                "SELECT attrelid::regclass::text, attcompression FROM pg_attribute "
                "WHERE attname = 'body' AND attrelid IN ('feed_documents'::regclass, 'pages'::regclass) "
                "ORDER BY 1"
            )
        ).all()
    assert [tuple(row) for row in methods] == [("feed_documents", "l"), ("pages", "l")]
