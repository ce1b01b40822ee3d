"""Batches: the pending events of a task, taken together in one transaction.

Built on the outbox (``shared.outbox``): an event emitted with ``batch=True`` waits in
its table, and the relay sends one message to the task's batch entry point, which calls
``run_batch``. Each event's step runs as if in a savepoint of the one transaction: the
savepoints are taken only when a step has failed without them (``shared.outbox.optimistic``).

Which run takes an event is decided in the database (``take``); the Redis claims only
keep concurrent runs from reading the same events. The claim also counts a run of
each event (``shared.failures.RUNS``, the one count of tries): an event claimed
before by a run that never finished (its worker died) is sent on its own instead, to
be retried and capped like any task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db import after_commit, session_scope
from shared.failures import RUNS, RUNS_TTL_SECONDS, Verdict, decide, record_failure
from shared.models import OutboxEvent, utcnow
from shared.outbox import (
    BATCH_ON_ITS_WAY,
    OUTBOX,
    Outgoing,
    Rerun,
    in_place_depth,
    optimistic,
    relay,
    savepoint,
    send_batch,
)
from shared.redis import get_redis
from shared.tasknames import TaskRef

log = logging.getLogger(__name__)

# A run's claim on an event (this prefix and the event id): other runs leave it alone.
CLAIM = "newsroom:outbox:claim"
# Claims every event it can and counts a run of each; returns the counts (0: claimed elsewhere).
_CLAIM = """
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('SET', KEYS[1] .. ':' .. id, 1, 'NX', 'PX', ARGV[1]) then
    local runs = redis.call('INCR', KEYS[2] .. ':' .. id)
    redis.call('EXPIRE', KEYS[2] .. ':' .. id, ARGV[2])
    out[#out + 1] = runs
  else
    out[#out + 1] = 0
  end
end
return out
"""

Step = Callable[[Session, dict[str, Any], Any], None]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pending event of a batched task, claimed by this run."""

    id: int
    task: str
    kwargs: dict[str, Any]
    sends: int
    # Runs started with this event, this one included: more than one means a run that
    # had it never finished (its worker died), so it is run alone from now on.
    runs: int


def run_batch(
    task: TaskRef,
    step: Step | None = None,
    *,
    limit: int,
    prepare: Callable[[Session, dict[str, Any]], Any] | None = None,
    finish: Callable[[Session, list[dict[str, Any]]], None] | None = None,
) -> int:
    """Run a batch of a task's pending events in one transaction; returns how many ran.

    Each event's ``step`` runs as if in a savepoint: an event skipped, or failed for good,
    is recorded alone and the rest commit; an event that fails otherwise is sent on its
    own, to be retried and capped like any other, and so is one whose earlier run never
    finished. The transaction first runs without savepoints (``shared.outbox.optimistic``):
    if a step fails there, it is rolled back and the batch runs again with them, so the
    statements a savepoint costs are paid only by a batch that needs one. A transient
    fault (the database) fails the whole batch, which the batch entry point's retry runs
    again. ``prepare`` reads what a step needs before the write transaction (on SQLite
    writers take turns); a step gets None where that failed, and reads for itself.
    ``finish`` runs last, in the same transaction, with the arguments of the events that
    ran (without ``step``: of every event taken; its failure fails the batch).
    """
    events: list[Claimed] = []
    more = False
    prepared: dict[int, Any] = {}
    if prepare is not None:
        with session_scope(read_only=True) as session:
            events, more = claim(session, task, limit=limit)
            for event in events:
                try:
                    prepared[event.id] = prepare(session, event.kwargs) if event.runs == 1 else None
                except Exception:  # the step reads it again, and meets the problem itself
                    prepared[event.id] = None
        if not events:  # none waiting, or all taken by other runs
            return 0
    run = _Run(task, step, finish, prepared)
    try:
        try:
            with session_scope() as session:
                optimistic(session)
                if prepare is None:  # nothing to read first: claimed in the one transaction
                    events, more = claim(session, task, limit=limit)
                run.write(session, events)
        except Rerun as rerun:
            log.info(
                "task %s: a step failed (%r); the batch runs again, each step in a savepoint",
                task.name,
                rerun.error,
            )
            run = _Run(task, step, finish, prepared)
            with session_scope() as session:
                run.write(session, events)
    except BaseException:
        release(events)
        raise
    if not events:
        return 0
    where = " in place, right after the commit that wrote them" if in_place_depth.get() else ""
    log.info(
        "task %s: %d events in one run%s: %s",
        task.name,
        len(run.ran),
        where,
        ",".join(str(e.id) for e in events),
    )
    for kwargs, detail in run.failures:
        record_failure(task.name, kwargs, detail)
    if more:
        try:
            send_batch(task.name)
        except Exception as error:  # the sweep sends one after the lease
            log.warning("outbox: no message for the rest of %s: %s", task.name, error)
    return len(run.ran)


@dataclass(slots=True)
class _Run:
    """One attempt at a batch's write transaction: what ran, and what failed for good."""

    task: TaskRef
    step: Step | None
    finish: Callable[[Session, list[dict[str, Any]]], None] | None
    prepared: dict[int, Any]
    ran: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def write(self, session: Session, events: Sequence[Claimed]) -> None:
        task, step = self.task, self.step
        taken = take(session, events)
        alone = [event for event in events if event.runs > 1 and event.id in taken]
        for event in events:
            if event.runs > 1 or event.id not in taken:
                continue
            if step is None:
                self.ran.append(event.kwargs)
                continue
            try:
                with savepoint(session):  # its events are forgotten if it rolls back
                    step(session, event.kwargs, self.prepared.get(event.id))
                self.ran.append(event.kwargs)
                continue
            except Exception as error:
                decision = decide(error, tries=event.runs)
                if decision.verdict is Verdict.TRANSIENT:
                    raise
                if decision.verdict is Verdict.SKIP:
                    log.info("task %s %s skipped: %s", task.name, event.kwargs, decision.detail)
                elif decision.verdict is Verdict.PERMANENT:
                    self.failures.append((event.kwargs, decision.detail))
                else:
                    log.warning(
                        "task %s %s failed in a batch; sent on its own",
                        task.name,
                        event.kwargs,
                        exc_info=True,
                    )
                    alone.append(event)
        if alone:
            log.info("task %s: %d events sent on their own", task.name, len(alone))
            send_alone(session, alone)
        if self.finish is not None:
            self.finish(session, self.ran)


def claim(session: Session, task: TaskRef, *, limit: int) -> tuple[list[Claimed], bool]:
    """Claim the pending events of a batched task for this run; and whether more are waiting.

    A run started by a message clears the "on its way" mark first, so an event that commits
    after this read sends a message of its own (a run in place sent no message, and leaves
    it). Events another run has claimed are left to it.
    """
    redis = get_redis()
    try:
        if not in_place_depth.get():
            redis.delete(f"{BATCH_ON_ITS_WAY}:{task.name}")
    except Exception as error:  # the mark expires on its own
        log.warning("outbox: could not clear the batch mark of %s: %s", task.name, error)
    rows = session.connection().execute(_PENDING, {"task": task.name, "limit": limit}).all()
    if not rows:
        return [], False
    lease_ms = int(get_settings().outbox_lease * 1000)
    runs = redis.eval(_CLAIM, 2, CLAIM, RUNS, lease_ms, RUNS_TTL_SECONDS, *(row.id for row in rows))
    claimed = [
        Claimed(row.id, task.name, row.kwargs, row.attempts, int(count))
        for row, count in zip(rows, runs, strict=True)
        if int(count)
    ]
    return claimed, len(rows) == limit


def take(session: Session, events: Sequence[Claimed]) -> set[int]:
    """Mark events done in the caller's transaction; returns the ids that were still pending."""
    if not events:
        return set()
    ids = [event.id for event in events]
    return set(session.connection().execute(_TAKE, {"ids": ids, "now": utcnow()}).scalars())


# Built once; run on the connection, as the session keeps no outbox rows.
_PENDING = (
    select(OUTBOX.c.id, OUTBOX.c.kwargs, OUTBOX.c.attempts)
    .where(OUTBOX.c.done_at.is_(None), OUTBOX.c.task == bindparam("task"), OUTBOX.c.gather.is_(True))
    .order_by(OUTBOX.c.id)
    .limit(bindparam("limit"))
)
_TAKE = (
    update(OUTBOX)
    .where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)), OUTBOX.c.done_at.is_(None))
    .values(done_at=bindparam("now"))
    .returning(OUTBOX.c.id)
)


def send_alone(session: Session, events: Sequence[Claimed]) -> None:
    """Send taken events on their own after commit: a message each, with the task's retries and cap."""
    if not events:
        return
    now = utcnow()
    session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.id.in_([event.id for event in events]))
        .values(gather=False, done_at=None, sent_at=now, next_try_at=now)
        .execution_options(synchronize_session=False)
    )
    outgoing = [Outgoing(event.id, event.task, event.kwargs, event.sends, False) for event in events]
    after_commit(session, lambda: relay(outgoing, in_place=False))


def release(events: Sequence[Claimed]) -> None:
    """Let other runs take these events again (the run that claimed them failed)."""
    if not events:
        return
    try:
        get_redis().delete(*(f"{CLAIM}:{event.id}" for event in events))
    except Exception as error:  # the claims expire on their own
        log.warning("outbox: claims not released: %s", error)
