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
