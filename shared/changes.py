"""Story changes announced on Redis after commit, so that every desk page hears of them at once.

The message carries nothing but a wake-up: readers ask the database what changed since the
last revision they saw, so a lost message only delays the news until the next look.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from shared.db import after_commit
from shared.redis import get_redis

log = logging.getLogger(__name__)

CHANNEL = "newsroom:desk:changed"
_FLAG = "story_change_announced"


def announce_change(session: Session) -> None:
    """Publish one wake-up on ``CHANNEL`` once this session's transaction commits."""
    if session.info.get(_FLAG):
        return
    session.info[_FLAG] = True
    after_commit(session, _publish)


def _publish() -> None:
    try:
        get_redis().publish(CHANNEL, b"1")
    except Exception:  # the desk looks again on its own within seconds
        log.warning("could not announce a story change on %s", CHANNEL, exc_info=True)
