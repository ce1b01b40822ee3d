"""The one Celery app: queues ingest, publish and syndicate, routed by task-name prefix."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from typing import Any, TypeVar

from celery import Celery, Task, bootsteps
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.errors import PermanentError, SkipEvent, TransientError

log = logging.getLogger(__name__)

QUEUES = ("ingest", "publish", "syndicate")
TASK_MODULES = ("services.ingest.tasks", "services.publish.tasks", "services.syndicate.tasks")

app = Celery("newsroom", include=list(TASK_MODULES))


@app.on_after_configure.connect  # type: ignore[untyped-decorator]
def _configure(sender: Celery, **_: Any) -> None:
    # Read settings when the app is first used, never at import.
    from shared.redis import celery_broker_url, redis_url

    settings = get_settings()
    time_limit = settings.task_time_limit
    sender.conf.update(
        broker_url=celery_broker_url(redis_url()),
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Above the longest task time limit, so a slow task is not delivered twice.
            "visibility_timeout": max(3600, time_limit * 4),
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        task_routes={f"{queue}.*": {"queue": queue} for queue in QUEUES},
        task_default_queue="syndicate",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_time_limit=time_limit,
        task_soft_time_limit=max(1, time_limit - 10),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_pool_limit=10,
    )


class _Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Beats from the consumer's event loop, so a worker whose loop hangs stops beating."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None

    def start(self, consumer: Any) -> None:
        from shared.health import BEAT_EVERY, beat

        beat("worker")
        self.timer_ref = consumer.timer.call_repeatedly(BEAT_EVERY, beat, ("worker",))

    def stop(self, consumer: Any) -> None:
        from shared.health import stop_beating

        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        stop_beating("worker")


app.steps["consumer"].add(_Heartbeat)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _after_fork(**_: Any) -> None:
    # Connections opened by the parent must not be shared with forked children.
    from shared.db import dispose_engines
    from shared.redis import reset_redis

    dispose_engines()
    reset_redis()


R = TypeVar("R")

_time_limits = False
_in_worker = False
# Task bodies by name, for running an event's task in the worker that emitted it.
_bodies: dict[str, Callable[..., Any]] = {}
# How deep runs in the emitting worker are nested (a batch of publishes run after the batch
# of ingests that emitted them, and the feed flags after those).
_running_here: ContextVar[int] = ContextVar("running_here", default=0)
MAX_HERE_DEPTH = 2


def worker_process() -> None:
    """Mark this process as a worker: events emitted with ``here`` may run in it."""
    global _in_worker
    _in_worker = True


def run_here(event_id: int | None, task: str, kwargs: dict[str, Any]) -> bool:
    """Run an outbox event's task in this worker, right after the commit that wrote it.

    ``event_id`` None runs a gathered task, which takes its pending events itself.
    Returns False, and leaves the event to the broker, when this is no worker, the task is
    unknown here, such runs are nested too deep already, or the run failed for a reason
    worth a retry.
    """
    body = _bodies.get(task)
    depth = _running_here.get()
    if body is None or not _in_worker or depth >= MAX_HERE_DEPTH:
        return False
    from shared.events import mark_done, running_event

    here = _running_here.set(depth + 1)
    token = running_event.set(event_id)
    try:
        body(**kwargs)
    except SkipEvent as skip:
        log.info("task %s skipped: %s", task, skip.detail)
    except PermanentError as error:
        record_failure(task, kwargs, error.detail)
    except Exception as error:
        log.warning("task %s %s failed here, queued for a worker: %r", task, kwargs, error)
        return False
    finally:
        unmarked = running_event.get() is not None
        running_event.reset(token)
        _running_here.reset(here)
    if unmarked and event_id is not None:  # no write transaction carried the done mark
        mark_done(event_id)
    return True


def enforce_time_limits() -> None:
    """Apply the task time limits in this process's main thread (a solo worker's tasks).

    At the soft limit the task gets ``SoftTimeLimitExceeded`` (and is retried like any
    failure); at the hard limit the process exits, its message is redelivered and the
    worker's supervisor starts another process.
    """
    global _time_limits
    _time_limits = True


@contextmanager
def _time_limit(name: str) -> Iterator[None]:
    if not _time_limits or threading.current_thread() is not threading.main_thread():
        yield
        return
    hard = get_settings().task_time_limit
    soft = max(1, hard - 10)
    fired = False

    def on_alarm(_signum: int, _frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            signal.setitimer(signal.ITIMER_REAL, max(1, hard - soft))
            raise SoftTimeLimitExceeded(f"task {name} ran past {soft} s")
        log.error("task %s ran past its hard time limit of %s s; this worker process exits", name, hard)
        os._exit(70)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, soft)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Seconds-scale retries of a task whose dependency failed for now; long waits live in the database.
TRANSIENT_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30)


# A message that kills its worker (or fails) this many times is a poison: it is
# recorded as failed instead of being redelivered for ever.
MAX_RUNS = 8


def newsroom_task(name: str, *, max_failures: int = 5) -> Callable[[Callable[..., R]], Task]:
    """Register a thin task: stable name, retries for transient faults, failures recorded."""

    def decorator(func: Callable[..., R]) -> Task:
        _bodies[name] = func

        @app.task(name=name, bind=True, max_retries=len(TRANSIENT_RETRY_DELAYS))  # type: ignore[untyped-decorator]
        @wraps(func)
        def run(self: Task, **kwargs: Any) -> R | None:
            from shared.events import event_id_of, mark_done, running_event

            event_id = event_id_of(self.request.id)
            if event_id is not None and _runs(event_id) > MAX_RUNS:
                record_failure(name, kwargs, f"outbox event {event_id} ran {MAX_RUNS} times; given up",
                               event_id=event_id)  # fmt: skip
                return None
            running_event.set(event_id)
            try:
                with _time_limit(name):
                    result = _run(self, func, name, max_failures, **kwargs)
            except BaseException:
                running_event.set(None)
                raise
            if running_event.get() is not None:  # no write transaction carried the mark
                mark_done(event_id)  # type: ignore[arg-type]
                running_event.set(None)
            return result

        return run

    return decorator


def _runs(event_id: int) -> int:
    """Count one more start of an outbox event's task; survives the worker dying."""
    from shared.redis import get_redis

    key = f"newsroom:runs:{event_id}"
    try:
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, 86400)
        return int(pipe.execute()[0])
    except Exception:  # without Redis there is no message to count either
        return 0


def _run(self: Task, func: Callable[..., R], name: str, max_failures: int, **kwargs: Any) -> R | None:
    """Run the task body, sorting failures into skip, permanent, transient and unknown.

    A retry leaves by raising celery's Retry, so the caller marks nothing done.
    """
    try:
        return func(**kwargs)
    except SkipEvent as skip:
        log.info("task %s skipped: %s", name, skip.detail)
        return None
    except PermanentError as error:
        record_failure(name, kwargs, error.detail)
        return None
    except (TransientError, OperationalError, PoolTimeoutError) as error:
        retries = self.request.retries
        if retries >= len(TRANSIENT_RETRY_DELAYS):
            record_failure(name, kwargs, f"gave up after {retries} retries: {error}")
            return None
        log.warning("task %s %s: transient failure, retry %d: %s", name, kwargs, retries + 1, error)
        raise self.retry(countdown=TRANSIENT_RETRY_DELAYS[retries], exc=error) from error
    except Exception as error:
        retries = self.request.retries
        if retries + 1 >= max_failures:
            log.exception("task %s %s failed for good", name, kwargs)
            record_failure(name, kwargs, repr(error))
            return None
        log.warning("task %s %s failed, retry %d", name, kwargs, retries + 1, exc_info=True)
        raise self.retry(countdown=TRANSIENT_RETRY_DELAYS[retries], exc=error) from error


def run_gathered(
    task: str,
    step: Callable[[Session, dict[str, Any], Any], None] | None = None,
    *,
    limit: int,
    prepare: Callable[[Session, dict[str, Any]], Any] | None = None,
    finish: Callable[[Session, list[dict[str, Any]]], None] | None = None,
) -> int:
    """Run a batch of a gathered task's pending events in one transaction; returns how many ran.

    Each event's ``step`` runs in a savepoint: an event skipped, or failed for good, is
    recorded alone and the rest commit; an event that fails otherwise is sent on its own, to
    be retried and capped like any other, and so is one whose earlier run never finished
    (its worker died). A database fault fails the whole batch, which the task's retry runs
    again. ``prepare`` reads what a step needs before the write transaction (on SQLite
    writers take turns); a step gets None where that failed, and reads for itself.
    ``finish`` runs last, in the same transaction, with the arguments of the events that
    ran (without ``step``: of every event taken, and its failure fails the batch).
    """
    from shared.db import session_scope
    from shared.events import Gathered, claim_gathered, release_claims, send_gathering, take, ungather

    # A run here, right after a commit, sent no message: it leaves the "on its way" mark alone.
    clear_mark = not _running_here.get()
    events: list[Gathered] = []
    more = False
    prepared: dict[int, Any] = {}
    if prepare is not None:
        with session_scope(read_only=True) as session:
            events, more = claim_gathered(session, task, limit=limit, clear_mark=clear_mark)
            for event in events:
                try:
                    prepared[event.id] = prepare(session, event.kwargs) if event.runs == 1 else None
                except Exception:  # the step reads it again, and meets the problem itself
                    prepared[event.id] = None
        if not events:  # none waiting, or all taken by other runs
            return 0
    failures: list[tuple[dict[str, Any], str]] = []
    ran: list[dict[str, Any]] = []
    try:
        with session_scope() as session:
            if prepare is None:  # nothing to read first: claimed in the one transaction
                events, more = claim_gathered(session, task, limit=limit, clear_mark=clear_mark)
            together = [event for event in events if event.runs == 1]
            taken = take(session, events)
            alone = [event for event in events if event.runs > 1 and event.id in taken]
            outbox: list[Any] = session.info.setdefault("outbox_events", [])
            for event in together:
                if event.id not in taken:
                    continue
                if step is None:
                    ran.append(event.kwargs)
                    continue
                emitted = len(outbox)
                try:
                    with session.begin_nested():
                        step(session, event.kwargs, prepared.get(event.id))
                    ran.append(event.kwargs)
                    continue
                except SkipEvent as skip:
                    log.info("task %s %s skipped: %s", task, event.kwargs, skip.detail)
                except PermanentError as error:
                    failures.append((event.kwargs, error.detail))
                except (TransientError, OperationalError, PoolTimeoutError):
                    raise
                except Exception:
                    log.warning("task %s %s failed in a batch; sent on its own", task, event.kwargs,
                                exc_info=True)  # fmt: skip
                    alone.append(event)
                del outbox[emitted:]  # the events its savepoint wrote are gone with it
            if alone:
                log.info("task %s: %d events sent on their own", task, len(alone))
                ungather(session, alone)
            if finish is not None:
                finish(session, ran)
    except BaseException:
        release_claims(events)
        raise
    if not events:
        return 0
    log.info("task %s: %d events in one run%s: %s", task, len(ran),
             " here, right after the commit that wrote them" if _running_here.get() else "",
             ",".join(str(event.id) for event in events))  # fmt: skip
    for kwargs, detail in failures:
        record_failure(task, kwargs, detail)
    if more:
        try:
            send_gathering(task)
        except Exception as error:  # the sweep sends one after the lease
            log.warning("outbox: no message for the rest of %s: %s", task, error)
    return len(ran)


def record_failure(task: str, kwargs: dict[str, Any], error: str, *, event_id: int | None = None) -> None:
    """Keep a task that failed for good, so it is shown and never retried in a loop.

    A failure of an outbox event's task (``event_id``, else the event this run is for) is
    recorded by the run that marks the event done, in the same transaction: a second copy
    of it (sent again by the sweep while the first was being retried) records nothing.
    """
    from sqlalchemy import update

    from shared.db import session_scope
    from shared.events import running_event
    from shared.models import Failure, OutboxEvent, utcnow

    key = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))[:200]
    if event_id is None:
        event_id = running_event.get()
    try:
        with session_scope() as session:
            if event_id is not None:
                running_event.set(None)  # marked here, not by this transaction's commit hook
                marked = session.scalar(
                    update(OutboxEvent)
                    .where(OutboxEvent.id == event_id, OutboxEvent.done_at.is_(None))
                    .values(done_at=utcnow())
                    .returning(OutboxEvent.id)
                )
                if marked is None:
                    log.info("task %s %s: outbox event %s was settled by another run", task, key, event_id)
                    return
            log.error("task %s %s failed: %s", task, key, error)
            session.add(Failure(task=task, key=key, error=error[:4000]))
    except Exception:
        log.exception("could not record the failure of %s %s", task, key)


def send_task(
    name: str, kwargs: dict[str, Any], *, task_id: str | None = None, expires: float | None = None
) -> None:
    """Put a task on its queue, failing fast when the broker is down (the outbox retries)."""
    app.send_task(
        name,
        kwargs=kwargs,
        task_id=task_id,
        expires=expires,
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )
