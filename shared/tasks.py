"""The task wrapper: every task is registered here, and every run's failure is sorted here.

Built on the Celery app (``shared.celery``) and the outbox (``shared.outbox``). A task
is a plain function registered under a name declared in ``shared.tasknames``; a task
whose events may be batched has a second, separately named entry point for its batch
(``batch_task``). While a task runs, the events it emits of a task declared ``in_place``
are run by this worker right after their commit (``_run_in_place``), saving the trip
through the broker; if that run fails, or the worker dies first, they go to the broker.

A task may also register a step that runs its event in the very transaction that emits
it (``in_transaction``, or ``at_commit`` for a step that takes every such event of the
transaction together, just before it commits): then the event is never written, and the
effect commits with its cause. An auto-publish runs so inside its ingest, and the feed
flags inside the publish: one transaction from a post's items to its feeds being flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from celery import Task
from sqlalchemy.orm import Session

from shared.celery import app, time_limit
from shared.config import get_settings
from shared.db import before_commit
from shared.failures import MAX_FAILURES, Decision, Verdict, count_run, decide, record_failure, too_many_runs
from shared.outbox import (
    Outgoing,
    deferred,
    event_id_of,
    in_place_depth,
    mark_done,
    run_in_place,
    run_in_transaction,
    running,
    savepoint,
)
from shared.tasknames import DECLARED, TaskRef

log = logging.getLogger(__name__)

R = TypeVar("R")

# Task bodies by registered name, for running an event in place.
_bodies: dict[str, Callable[..., Any]] = {}
# Runs in place nest at most this deep (ingests, then their publishes, then their feed flags).
MAX_IN_PLACE_DEPTH = 2

Step = Callable[[Session, dict[str, Any]], None]
Steps = Callable[[Session, list[dict[str, Any]]], None]
# Steps run in the transaction that emits their event, by task name: at the emit, in a
# savepoint, or once for all of the transaction's events, just before it commits.
_steps: dict[str, Step] = {}
_steps_at_commit: dict[str, Steps] = {}
_AT_COMMIT = "tasks_at_commit"


def newsroom_task(ref: TaskRef, *, max_failures: int = MAX_FAILURES) -> Callable[[Callable[..., R]], Task]:
    """Register a thin task under its declared name: retries for transient faults, failures recorded."""
    if DECLARED.get(ref.name) != ref:
        raise ValueError(f"task {ref.name} is not declared in shared.tasknames")
    return lambda func: _register(ref.name, func, max_failures)


def batch_task(ref: TaskRef) -> Callable[[Callable[[], R]], Task]:
    """Register the batch entry point of ``ref``: a run that takes the task's pending events."""
    if DECLARED.get(ref.name) != ref or ref.batch is None:
        raise ValueError(f"task {ref.name} declares no batch entry point in shared.tasknames")
    batch = ref.batch
    return lambda func: _register(batch, func, MAX_FAILURES)


def in_transaction(ref: TaskRef) -> Callable[[Step], Step]:
    """Register how a worker runs one of ``ref``'s events in the transaction that emits it."""
    return lambda step: _in_transaction(ref, step, _steps)


def at_commit(ref: TaskRef) -> Callable[[Steps], Steps]:
    """Register how a worker runs all of a transaction's events of ``ref`` just before it commits."""
    return lambda steps: _in_transaction(ref, steps, _steps_at_commit)


def _in_transaction(ref: TaskRef, step: R, steps: dict[str, R]) -> R:
    if DECLARED.get(ref.name) != ref or not ref.in_place:
        raise ValueError(f"task {ref.name} is not declared in_place in shared.tasknames")
    steps[ref.name] = step
    return step


def _run_in_transaction(session: Session, task: TaskRef, kwargs: dict[str, Any]) -> bool:
    """Run an event in the transaction that emits it; False to have it written to the outbox."""
    if task.name in _steps_at_commit:
        if not session.info.get(_AT_COMMIT):
            session.info[_AT_COMMIT] = True
            before_commit(session, lambda: _run_at_commit(session))
        deferred(session).append((task.name, kwargs))
        return True
    step = _steps.get(task.name)
    if step is None:
        return False
    try:
        with savepoint(session):
            step(session, kwargs)
    except Exception as error:
        decision = decide(error, tries=1)
        if decision.verdict is Verdict.SKIP:
            log.info("task %s skipped: %s", task.name, decision.detail)
            return True
        log.warning(
            "task %s %s failed in the transaction that emitted it; written to the outbox: %r",
            task.name,
            kwargs,
            error,
        )
        return False
    return True


def _run_at_commit(session: Session) -> None:
    pending = deferred(session)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for name, kwargs in pending:
        by_task.setdefault(name, []).append(kwargs)
    pending.clear()
    for name, events in by_task.items():
        _steps_at_commit[name](session, events)


def _register(name: str, func: Callable[..., Any], max_failures: int) -> Task:
    _bodies[name] = func

    @app.task(name=name, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    @wraps(func)
    def run(self: Task, **kwargs: Any) -> None:
        event_id = event_id_of(self.request.id)
        # One count of tries per piece of work: its outbox event, else its message (kept on a retry).
        tries = count_run(str(event_id) if event_id is not None else f"message:{self.request.id}")
        if too_many_runs(tries):
            _failed(name, kwargs, f"started {tries} times (it kills its worker?); given up", event_id)
        else:
            here = get_settings().outbox_run_here
            runner = run_in_place.set(_run_in_place if here else None)
            transaction = run_in_transaction.set(_run_in_transaction if here else None)
            try:
                with running(event_id), time_limit(name):
                    func(**kwargs)
                return
            except Exception as error:
                decision = _settle(name, kwargs, error, event_id, tries=tries, max_failures=max_failures)
                if decision is not None:
                    log.warning(
                        "task %s %s: %s failure, run %d: %s",
                        name,
                        kwargs,
                        decision.verdict.value,
                        tries,
                        decision.detail,
                        exc_info=decision.verdict is Verdict.FAILED,
                    )
                    raise self.retry(countdown=decision.delay, exc=error) from error
            finally:
                run_in_place.reset(runner)
                run_in_transaction.reset(transaction)
        if event_id is not None:  # skipped, failed for good or given up: done
            mark_done(event_id)

    return run


def _run_in_place(event: Outgoing) -> bool:
    """Run an event's task (a batch: its batch entry point) in this worker, after the commit that wrote it.

    Returns False, leaving the event to the broker, when runs in place are nested too deep
    already or the run failed for a reason worth a retry.
    """
    depth = in_place_depth.get()
    ref = DECLARED[event.task]
    name = ref.batch if event.batch else ref.name
    body = _bodies.get(name or "")
    if body is None or depth >= MAX_IN_PLACE_DEPTH:
        return False
    event_id = None if event.batch else event.id
    nested = in_place_depth.set(depth + 1)
    try:
        with running(event_id):
            body(**({} if event_id is None else event.kwargs))
    except Exception as error:
        if _settle(name or event.task, event.kwargs, error, event_id, tries=1) is not None:
            log.warning("task %s %s failed in place, sent to a worker: %r", name, event.kwargs, error)
            return False
        if event_id is not None:  # skipped or failed for good: done
            mark_done(event_id)
    finally:
        in_place_depth.reset(nested)
    return True


def _settle(
    name: str,
    kwargs: dict[str, Any],
    error: Exception,
    event_id: int | None,
    *,
    tries: int,
    max_failures: int = MAX_FAILURES,
) -> Decision | None:
    """Log or record a failed run as ``failures.decide`` says; the decision if it is to be tried again."""
    decision = decide(error, tries=tries, max_failures=max_failures)
    if decision.verdict is Verdict.SKIP:
        log.info("task %s skipped: %s", name, decision.detail)
    elif decision.verdict in (Verdict.PERMANENT, Verdict.GIVE_UP):
        _failed(name, kwargs, decision.detail, event_id)
    else:
        return decision
    return None


def _failed(name: str, kwargs: dict[str, Any], detail: str, event_id: int | None) -> None:
    """Record a failure for good, once: an event another run of it finished is not recorded again
    (the sweep may have sent it a second time while the first was still being retried)."""
    if event_id is not None and not mark_done(event_id):
        log.info("task %s %s: done by another run; not recorded again: %s", name, kwargs, detail)
        return
    record_failure(name, kwargs, detail)
