"""The database engine, created lazily, and the one way to open a transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from shared.config import get_settings

log = logging.getLogger(__name__)


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


_engines: dict[tuple[str, bool], Engine] = {}


def _engine(url: str, immediate: bool) -> Engine:
    key = (url, immediate)
    if key not in _engines:
        _engines[key] = _create_engine(url, immediate)
    return _engines[key]


def _create_engine(url: str, immediate: bool) -> Engine:
    if _is_sqlite(url):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below decide how transactions start.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A writer takes the lock up front: a deferred transaction that later
            # upgrades to a write fails with "database is locked" instead of waiting.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def get_engine(*, read_only: bool = False) -> Engine:
    """The engine for the configured database (SQLite readers get deferred transactions)."""
    url = get_settings().sqlalchemy_url
    return _engine(url, immediate=not (read_only and _is_sqlite(url)))


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and in tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


# Called with the session just before every write transaction commits.
before_commit_hooks: list[Callable[[Session], None]] = []


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed."""
    session.info.setdefault("after_commit", []).append(callback)


@contextmanager
def session_scope(*, read_only: bool = False) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error, then post-commit hooks."""
    session = Session(bind=get_engine(read_only=read_only), expire_on_commit=False)
    try:
        yield session
        if not read_only:
            for hook in before_commit_hooks:
                hook(session)
            session.commit()
        # A reader's transaction ends with close() below, which (unlike rollback)
        # leaves what was loaded readable after the scope.
    except BaseException:
        session.rollback()
        session.info.pop("after_commit", None)
        raise
    finally:
        callbacks: list[Callable[[], None]] = session.info.pop("after_commit", [])
        session.close()
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the outbox sweep will retry whatever this missed
            log.warning("post-commit hook failed", exc_info=True)
