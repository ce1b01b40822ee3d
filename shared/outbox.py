"""The transactional outbox: a change and the tasks announcing it commit together.

``emit`` adds an outbox row in the caller's transaction; right after the commit
``relay`` sends it to Celery. If the process or Redis dies in between, the
scheduler's ``sweep`` sends again whatever is not done within the lease, so work
is delivered at least once and every task is idempotent. A task marks its event
done with ``finish``, in a transaction of its own choosing (usually the one that
writes its effect).

An event emitted with ``batch=True`` is not sent on its own: the relay sends one
message to the task's batch entry point (unless one is already on its way), and
the run it starts takes the pending events of the task together
(``shared.batches``, built on this module).

In a worker, an event of a task declared ``in_place`` whose step can run in the
emitting transaction (``shared.tasks.in_transaction``) is not written at all: the
step runs there, in a savepoint, and commits with the change that caused it. If it
fails, the event is written as usual and meets the failure again as a task.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.celery import send_task
from shared.config import get_settings
from shared.db import after_commit, session_scope
from shared.models import OutboxEvent, utcnow
from shared.redis import get_redis
from shared.tasknames import DECLARED, TaskRef

log = logging.getLogger(__name__)

# A send the broker refused is tried again by the sweep after this.
RETRY_UNSENT = timedelta(seconds=1)
# Set while a message to a task's batch entry point is on its way (a key per task).
BATCH_ON_ITS_WAY = "newsroom:outbox:gather"
# A batch message that was lost stops holding back new ones after this.
BATCH_ON_ITS_WAY_MS = 2000
# The events emitted in a session's transaction, relayed after its commit.
_EMITTED = "outbox_events"
_RELAYED = "outbox_relayed"
# The events whose steps run just before the commit.
_DEFERRED = "outbox_deferred"
# Set on a session whose savepoints are plain steps (``optimistic``).
_OPTIMISTIC = "outbox_optimistic"


OUTBOX = OutboxEvent.metadata.tables[OutboxEvent.__tablename__]
_WRITTEN_COLUMNS = ("task", "kwargs", "created_at", "next_try_at", "attempts", "sent_at", "gather")
_INSERT_EVENT = OUTBOX.insert().returning(OUTBOX.c.id)


class Outgoing(NamedTuple):
    """An outbox event as the relay sends it."""

    id: int
    task: str
    kwargs: dict[str, Any]
    sends: int
    batch: bool


def emit(
    session: Session, task: TaskRef, kwargs: dict[str, Any], *, batch: bool = False
) -> OutboxEvent | None:
    """Write a task to the outbox in the current transaction; it is sent after the commit.

    None where a worker ran the task in this transaction instead (see the module's doc).

    The row is written as sent (``sent_at``) because the post-commit relay sends it at
    once; a relay that fails un-marks it, and one that never ran (the process died)
    leaves it not done, which the sweep notices after the lease.
    """
    if batch and task.batch is None:
        raise ValueError(f"task {task.name} has no batch entry point")
    runner = run_in_transaction.get()
    if runner is not None and task.in_place and runner(session, task, kwargs):
        return None
    batch = batch and get_settings().outbox_batch  # off: every event on its own (to measure batches)
    now = utcnow()
    event = OutboxEvent(
        task=task.name, kwargs=kwargs, created_at=now, next_try_at=now, attempts=0, sent_at=now, gather=batch
    )
    # The change it announces goes first; the row itself is one Core INSERT (the unit of
    # work's bookkeeping for it cost more than the statement). The object is not in the
    # session: it is what was written, for the relay.
    session.flush()
    values = {column: getattr(event, column) for column in _WRITTEN_COLUMNS}
    event.id = session.connection().execute(_INSERT_EVENT, values).scalar_one()
    events = emitted(session)
    if not session.info.get(_RELAYED):
        # One relay per transaction, of whatever is on the list when it commits.
        session.info[_RELAYED] = True
        after_commit(session, lambda: relay([_outgoing(e) for e in events]))
    events.append(event)
    return event


def emitted(session: Session) -> list[OutboxEvent]:
    """The events emitted so far in this transaction (a savepoint rolled back drops its own)."""
    events: list[OutboxEvent] = session.info.setdefault(_EMITTED, [])
    return events


def deferred(session: Session) -> list[tuple[str, dict[str, Any]]]:
    """The events of this transaction whose steps run together just before it commits
    (``shared.tasks.at_commit``), by task name (a savepoint rolled back drops its own)."""
    steps: list[tuple[str, dict[str, Any]]] = session.info.setdefault(_DEFERRED, [])
    return steps


class Rerun(BaseException):
    """A step failed in a transaction that runs without savepoints (``optimistic``).

    Raised past every handler of ordinary errors (it is not an ``Exception``), to the code
    that began the transaction: it rolls the transaction back and runs it again without
    ``optimistic``, where the failure is handled in its savepoint.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def optimistic(session: Session) -> None:
    """Run this transaction's savepoints (``savepoint``) as plain steps: a step that fails
    raises ``Rerun`` instead of rolling back to its savepoint.

    A savepoint costs two statements and their round trips, on every step of a batch,
    while a step that fails is rare; the caller pays for a failure by running the whole
    transaction again, with savepoints.
    """
    session.info[_OPTIMISTIC] = True


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A savepoint whose rollback also forgets the events emitted in it."""
    if session.info.get(_OPTIMISTIC):
        try:
            yield
        except Exception as error:
            raise Rerun(error) from error
        return
    outbox, later = emitted(session), deferred(session)
    marks = len(outbox), len(later)
    try:
        with session.begin_nested():
            yield
    except BaseException:
        del outbox[marks[0] :]
        del later[marks[1] :]
        raise


def _outgoing(event: OutboxEvent) -> Outgoing:
    return Outgoing(event.id, event.task, event.kwargs, event.attempts, event.gather)


# How a worker runs an event in place, right after the commit that wrote it (set by the task
# wrapper, ``shared.tasks``, while a task runs); it returns False to leave the event to the broker.
run_in_place: ContextVar[Callable[[Outgoing], bool] | None] = ContextVar("run_in_place", default=None)
# How a worker runs an event in the transaction that emits it (set by the task wrapper while
# a task runs); it returns False to have the event written as usual.
run_in_transaction: ContextVar[Callable[[Session, TaskRef, dict[str, Any]], bool] | None] = ContextVar(
    "run_in_transaction", default=None
)
# How deep runs in place are nested here (a batch of publishes run after the batch of ingests
# that emitted them, and the feed flags after those).
in_place_depth: ContextVar[int] = ContextVar("in_place_depth", default=0)


def relay(events: list[Outgoing], *, in_place: bool = True) -> int:
    """Send outbox events to the broker; the ones it did not take are left for the sweep.

    In a worker, a task declared ``in_place`` is run here first (a batch once, taking all its
    pending events); it goes to the broker if that run fails.
    """
    failed: list[int] = []
    batches: set[str] = set()
    runner = run_in_place.get() if in_place else None
    for event in events:
        if event.batch and event.task in batches:
            continue
        ref = DECLARED.get(event.task)
        if runner is not None and ref is not None and ref.in_place and runner(event):
            if event.batch:
                batches.add(event.task)
            continue
        if failed:  # the broker is down: do not wait on it once per event
            failed.append(event.id)
            continue
        try:
            if event.batch:
                send_batch(event.task)
                batches.add(event.task)
            else:
                send_task(event.task, event.kwargs, task_id=f"outbox-{event.id}-{event.sends}")
        except Exception as error:
            log.warning("outbox %s: broker unavailable: %s", event.id, error)
            failed.append(event.id)
    if failed:
        with session_scope() as session:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(failed))
                .values(sent_at=None, next_try_at=utcnow() + RETRY_UNSENT)
            )
    return len(events) - len(failed)


def send_batch(task: str) -> None:
    """Send the message to ``task``'s batch entry point, unless one is on its way."""
    batch = DECLARED[task].batch
    assert batch is not None, f"{task} has no batch entry point"
    if get_redis().set(f"{BATCH_ON_ITS_WAY}:{task}", 1, nx=True, px=BATCH_ON_ITS_WAY_MS):
        send_task(batch, {}, task_id=f"batch-{task}-{secrets.token_hex(6)}")


def sweep(limit: int = 500) -> int:
    """Send what the relay could not, and again what a worker never finished.

    Run by the scheduler. An event the broker refused, or one sent but not done
    within the lease (Redis restarted empty, a worker or the API killed at the
    wrong moment), is claimed and sent again; every task is idempotent. The row's
    ``attempts`` counts these sends (it keeps message ids apart); how often the
    work was tried is counted by ``shared.failures``.
    """
    now = utcnow()
    lost_before = now - timedelta(seconds=get_settings().outbox_lease)
    columns = (OutboxEvent.id, OutboxEvent.task, OutboxEvent.kwargs, OutboxEvent.attempts, OutboxEvent.gather)
    # Look before taking a writer's lock: on SQLite a write transaction every tick
    # would queue behind (and hold up) the workers for nothing.
    unsent_rows = (OutboxEvent.sent_at.is_(None), OutboxEvent.next_try_at <= now)
    lost_rows = (OutboxEvent.done_at.is_(None), OutboxEvent.sent_at < lost_before)
    with session_scope(read_only=True) as session:
        anything = session.scalar(select(OutboxEvent.id).where(*unsent_rows).limit(1)) or session.scalar(
            select(OutboxEvent.id).where(*lost_rows).limit(1)
        )
    if anything is None:
        return 0
    with session_scope() as session:
        unsent = select(*columns).where(*unsent_rows).order_by(OutboxEvent.id).limit(limit)
        lost = select(*columns).where(*lost_rows).order_by(OutboxEvent.id).limit(limit)
        if session.get_bind().dialect.name == "postgresql":
            unsent = unsent.with_for_update(skip_locked=True)
            lost = lost.with_for_update(skip_locked=True)
        rows = [*session.execute(unsent), *session.execute(lost)]
        if rows:
            # Claimed as sent now: another scheduler's sweep leaves them alone for a lease.
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_([row.id for row in rows]))
                .values(sent_at=now, attempts=OutboxEvent.attempts + 1)
            )
    if not rows:
        return 0
    log.info("outbox sweep: sending %d events again", len(rows))
    return relay([Outgoing(row.id, row.task, row.kwargs, row.attempts + 1, row.gather) for row in rows])


# --- done marks -------------------------------------------------------------------------------

# The outbox event whose task this worker is running, until it is marked done. Set by the
# task wrapper (``shared.tasks``) around the task body.
running_event: ContextVar[int | None] = ContextVar("running_event", default=None)


def finish(session: Session) -> None:
    """Mark the running task's outbox event done in the caller's transaction.

    A task calls it in the transaction that writes its effect, so a finished task costs
    no extra commit; any later step of the task has its own recovery in the database
    (dirty feeds, a delivery's ``next_attempt_at``). A task that never calls it is marked
    done by the wrapper, in a transaction of its own, once the body returns.
    """
    event_id = running_event.get()
    if event_id is None:
        return
    _mark(session, event_id)
    running_event.set(None)


@contextmanager
def running(event_id: int | None) -> Iterator[None]:
    """Run an event's task: ``finish`` marks the event done in the task's transaction; a body
    that returns without calling it has it marked here, in a transaction of its own."""
    token = running_event.set(event_id)
    try:
        yield
        unfinished = running_event.get()
    finally:
        running_event.reset(token)
    if unfinished is not None:
        mark_done(unfinished)


def mark_done(event_id: int) -> bool:
    """Record, in a transaction of its own, that a worker finished an outbox event's task;
    False if it was done already (another run of it finished first)."""
    with session_scope() as session:
        return _mark(session, event_id)


def _mark(session: Session, event_id: int) -> bool:
    marked = session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.id == event_id, OutboxEvent.done_at.is_(None))
        .values(done_at=utcnow())
        .returning(OutboxEvent.id)
    )
    return marked.first() is not None


def event_id_of(task_id: str | None) -> int | None:
    """The outbox event a Celery task id was sent for (``outbox-<id>-<sends>``), if any."""
    if not task_id or not task_id.startswith("outbox-"):
        return None
    parts = task_id.split("-")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
