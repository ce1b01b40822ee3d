"""The database engine, created lazily, and the one way to open a transaction."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
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
    if immediate:
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    # Readers have an engine of their own, whose every transaction is read-only (a write
    # fails loudly) and ends with COMMIT: psycopg forgets its prepared statements at every
    # ROLLBACK, so readers ending that way had every statement parsed and planned afresh.
    readonly = "-c default_transaction_read_only=on"
    options = make_url(url).query.get("options")
    options = f"{options} {readonly}" if isinstance(options, str) else readonly
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args={"options": options}
    )


def get_engine(*, read_only: bool = False) -> Engine:
    """The engine for the configured database: readers get deferred transactions on SQLite,
    read-only ones on PostgreSQL."""
    return _engine(get_settings().sqlalchemy_url, immediate=not read_only)


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and in tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the session's transaction has committed."""
    session.info.setdefault("after_commit", []).append(callback)


def before_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` in the session's transaction, last, just before it commits; if it
    raises, the transaction rolls back."""
    session.info.setdefault("before_commit", []).append(callback)


@contextmanager
def _writer_turn(url: str) -> Iterator[None]:
    """On SQLite, wait for this process's turn to write on a file lock.

    SQLite lets one writer in at a time; a writer that finds the lock taken sleeps
    in steps of up to 100 ms before it looks again, which under load leaves the
    database idle most of the time. A kernel file lock hands the turn over the
    moment the previous writer lets go (and is released if its process dies).
    """
    database = make_url(url).database if _is_sqlite(url) else None
    if not database or database == ":memory:":
        yield
        return
    handle = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


@contextmanager
def session_scope(*, read_only: bool = False) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error, then post-commit hooks."""
    with ExitStack() as turn:
        if not read_only:
            turn.enter_context(_writer_turn(get_settings().sqlalchemy_url))
        session = Session(bind=get_engine(read_only=read_only), expire_on_commit=False)
        try:
            yield session
            # A callback may add another (the list is read as it grows).
            for callback in session.info.get("before_commit", []):
                callback()
            if not read_only or not _is_sqlite(get_settings().sqlalchemy_url):
                session.commit()  # a PostgreSQL reader's too: see _create_engine
            # A SQLite reader's transaction ends with close() below, which (unlike
            # rollback) leaves what was loaded readable after the scope.
        except BaseException:
            session.rollback()
            session.info.pop("after_commit", None)
            raise
        finally:
            callbacks: list[Callable[[], object]] = session.info.pop("after_commit", [])
            session.close()
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the outbox sweep will retry whatever this missed
            log.warning("post-commit hook failed", exc_info=True)
