"""The task wrapper: every task is registered here, and every run's failure is sorted here.

Built on the Celery app (``shared.celery``) and the outbox (``shared.outbox``). A task
is a plain function registered under a name declared in ``shared.tasknames``; a task
whose events may be batched has a second, separately named entry point for its batch
(``batch_task``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from celery import Task

from shared.celery import app, time_limit
from shared.failures import MAX_FAILURES, Verdict, count_run, decide, record_failure, too_many_runs
from shared.outbox import event_id_of, mark_done, running_event
from shared.tasknames import DECLARED, TaskRef

log = logging.getLogger(__name__)

R = TypeVar("R")


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


def _register(name: str, func: Callable[..., Any], max_failures: int) -> Task:
    @app.task(name=name, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    @wraps(func)
    def run(self: Task, **kwargs: Any) -> None:
        event_id = event_id_of(self.request.id)
        # One count of tries per piece of work: its outbox event, else its message (kept on a retry).
        tries = count_run(str(event_id) if event_id is not None else f"message:{self.request.id}")
        if too_many_runs(tries):
            record_failure(name, kwargs, f"started {tries} times (it kills its worker?); given up")
        else:
            token = running_event.set(event_id)
            try:
                with time_limit(name):
                    func(**kwargs)
            except Exception as error:
                decision = decide(error, tries=tries, max_failures=max_failures)
                if decision.verdict is Verdict.SKIP:
                    log.info("task %s skipped: %s", name, decision.detail)
                elif decision.verdict in (Verdict.PERMANENT, Verdict.GIVE_UP):
                    record_failure(name, kwargs, decision.detail)
                else:
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
                # A task whose body did not call shared.outbox.finish is marked done below.
                event_id = running_event.get()
                running_event.reset(token)
        if event_id is not None:
            mark_done(event_id)

    return run
