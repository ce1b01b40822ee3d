"""Generations: counters in Redis that move after every commit changing rows of some models.

A process may keep what it read of those rows while the counter stays where it was when it
read them (and for a bounded time at most): a change committed anywhere moves the counter,
so the next use reads again. Without Redis, nothing is kept.
"""

from __future__ import annotations

import logging

from sqlalchemy import event
from sqlalchemy.orm import Session, UOWTransaction

from shared.redis import get_redis

log = logging.getLogger(__name__)


class Generation:
    """The counter of changes to ``models``' rows, kept in Redis under ``key``."""

    def __init__(self, key: str, *models: type) -> None:
        self.key = key
        self.models = models
        self._changed = f"changed:{key}"
        event.listen(Session, "after_flush", self._note)
        event.listen(Session, "after_commit", self._move)
        event.listen(Session, "after_rollback", self._forget)

    def current(self) -> int | None:
        """Where the counter stands; None when Redis cannot say (then nothing may be kept)."""
        try:
            value = get_redis().get(self.key)
        except Exception as error:
            log.warning("%s: Redis unavailable, nothing kept: %s", self.key, error)
            return None
        return int(value or 0)

    def changed_in(self, session: Session) -> bool:
        """Whether this session's transaction changed such rows (flushed or not, not committed)."""
        return bool(session.info.get(self._changed)) or self._pending(session)

    def _pending(self, session: Session) -> bool:
        return any(isinstance(row, self.models) for row in (*session.new, *session.dirty, *session.deleted))

    def _note(self, session: Session, _flush: UOWTransaction) -> None:
        if self._pending(session):
            session.info[self._changed] = True

    def _move(self, session: Session) -> None:
        if session.info.pop(self._changed, False):
            try:
                get_redis().incr(self.key)
            except Exception as error:  # processes keep what they know for a bounded time only
                log.warning("%s: rows changed, but Redis was not told: %s", self.key, error)

    def _forget(self, session: Session) -> None:
        if not session.in_transaction():
            session.info.pop(self._changed, None)
