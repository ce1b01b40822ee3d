"""With the database away the API says so with 503, and keeps nothing by halves."""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient

from tests.helpers.support import newsroom_environment


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port  # nothing listens once the probe is closed


def test_wire_posts_and_readiness_answer_503_while_the_database_is_away(redis_url: str) -> None:
    url = f"postgresql+psycopg://newsroom@127.0.0.1:{closed_port()}/newsroom?connect_timeout=2"
    with newsroom_environment({"NEWSROOM_DATABASE_URL": url, "NEWSROOM_REDIS_URL": redis_url}):
        from services.app import create_app

        client = TestClient(create_app(), raise_server_exceptions=False)
        answer = client.post(
            "/v1/wire/wire",
            content=b'{"uri": "urn:x"}',
            headers={"Authorization": "Bearer nr_wire_x", "Content-Type": "application/ninjs+json"},
        )
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert answer.json()["error"] == "unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["database"] != "ok"


def test_connections_the_server_dropped_fail_once_then_reconnect(redis_url: str) -> None:
    """Pooled connections are not pinged before use: after the server dropped them (a restart),
    one transaction fails as a disconnect, and the next ones work on fresh connections."""
    from tests.helpers.support import postgres_database

    databases = postgres_database()
    url = next(databases)
    try:
        _drop_and_reconnect(url, redis_url)
    finally:
        databases.close()


def _drop_and_reconnect(url: str, redis_url: str) -> None:
    import pytest
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from shared.db import session_scope

    with newsroom_environment({"NEWSROOM_DATABASE_URL": url, "NEWSROOM_REDIS_URL": redis_url}):
        held = []
        for _ in range(3):  # several connections in the pool
            scope = session_scope(read_only=True)
            held.append((scope, scope.__enter__()))
        for _scope, session in held:
            assert session.scalar(text("SELECT 1")) == 1
        for scope, _session in reversed(held):
            scope.__exit__(None, None, None)
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            dropped = connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        admin.dispose()
        assert dropped >= 3
        with pytest.raises(OperationalError) as failure, session_scope(read_only=True) as session:
            session.scalar(text("SELECT 1"))
        assert failure.value.connection_invalidated
        for _ in range(5):  # every later transaction, on any pooled connection, works
            with session_scope() as session:
                assert session.scalar(text("SELECT 1")) == 1
