"""What a failed run of a task means, how often the work was tried, and the failures kept.

Every runner (a task run from its message, a batch of gathered events) asks ``decide``;
the one count of tries is the Redis run counter of the piece of work (its outbox event,
or its message when it has none), which survives a worker that dies mid-run.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.db import session_scope
from shared.errors import PermanentError, SkipEvent, TransientError
from shared.models import Failure
from shared.redis import get_redis

log = logging.getLogger(__name__)

# How many runs a piece of work has started (this prefix, then the outbox event id or the message id).
RUNS = "newsroom:runs"
RUNS_TTL_SECONDS = 86400
# Seconds-scale pauses before the next try of work whose dependency failed for now (the
# database or Redis); long waits live in database columns, swept by the scheduler.
RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)
# A transient failure is tried again until this many runs, the longest ladder above.
MAX_RUNS = len(RETRY_DELAYS) + 1
# Work failing for an unknown reason is tried this many times by default.
MAX_FAILURES = 5
# Exceptions that mean "try again later": ours, and the database's own for a lost connection or pool.
TRANSIENT = (TransientError, OperationalError, PoolTimeoutError)


class Verdict(enum.Enum):
    SKIP = "skip"  # nothing to do; the work is done
    PERMANENT = "permanent"  # recorded as failed, never tried again
    TRANSIENT = "transient"  # a dependency failed for now: tried again after ``delay``
    FAILED = "failed"  # for an unknown reason: tried again after ``delay``, a few times
    GIVE_UP = "give up"  # tried too often: recorded as failed


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    detail: str
    delay: float = 0.0


def decide(error: BaseException, *, tries: int, max_failures: int = MAX_FAILURES) -> Decision:
    """What a failure means, after ``tries`` runs of the work (this one included)."""
    if isinstance(error, SkipEvent):
        return Decision(Verdict.SKIP, error.detail)
    if isinstance(error, PermanentError):
        return Decision(Verdict.PERMANENT, error.detail)
    transient = isinstance(error, TRANSIENT)
    if tries >= (MAX_RUNS if transient else min(max_failures, MAX_RUNS)):
        return Decision(Verdict.GIVE_UP, f"gave up after {tries} runs: {error!r}")
    delay = RETRY_DELAYS[min(max(0, tries - 1), len(RETRY_DELAYS) - 1)]
    return Decision(Verdict.TRANSIENT if transient else Verdict.FAILED, repr(error), delay)


def too_many_runs(tries: int) -> bool:
    """Whether work started this often kills its worker (a poison): it is not run again."""
    return tries > MAX_RUNS


def count_run(work: str) -> int:
    """Count one more start of a piece of work; returns the count, 1 when Redis is away."""
    key = f"{RUNS}:{work}"
    try:
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, RUNS_TTL_SECONDS)
        return int(pipe.execute()[0])
    except Exception:  # without Redis there is no message to count either
        return 1


def record_failure(task: str, kwargs: dict[str, Any], error: str) -> None:
    """Keep a task that failed for good, so it is shown and never retried in a loop."""
    key = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))[:200]
    log.error("task %s %s failed: %s", task, key, error)
    try:
        with session_scope() as session:
            session.add(Failure(task=task, key=key, error=error[:4000]))
    except Exception:
        log.exception("could not record the failure of %s %s", task, key)
