"""The one Celery app: queues ingest, publish and syndicate, routed by task-name prefix.

Also the one way to put a message on a queue (``send_task``) and the time limits of a
solo worker. The task wrapper is built on this module (``shared.tasks``), and so is
the outbox (``shared.outbox``); this module imports neither.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, bootsteps
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from shared.config import get_settings
from shared.db import dispose_engines
from shared.health import BEAT_EVERY, beat, stop_beating
from shared.redis import celery_broker_url, redis_url, reset_redis
from shared.tasknames import QUEUES

log = logging.getLogger(__name__)

TASK_MODULES = ("services.ingest.tasks", "services.publish.tasks", "services.syndicate.tasks")

app = Celery("newsroom", include=list(TASK_MODULES))


@app.on_after_configure.connect  # type: ignore[untyped-decorator]
def _configure(sender: Celery, **_: Any) -> None:
    # Read settings when the app is first used, never at import.
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
        beat("worker")
        self.timer_ref = consumer.timer.call_repeatedly(BEAT_EVERY, beat, ("worker",))

    def stop(self, consumer: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        stop_beating("worker")


app.steps["consumer"].add(_Heartbeat)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _after_fork(**_: Any) -> None:
    # Connections opened by the parent must not be shared with forked children.
    dispose_engines()
    reset_redis()


_time_limits = False


def enforce_time_limits() -> None:
    """Apply the task time limits in this process's main thread (a solo worker's tasks).

    At the soft limit the task gets ``SoftTimeLimitExceeded`` (and is retried like any
    failure); at the hard limit the process exits, its message is redelivered and the
    worker's supervisor starts another process.
    """
    global _time_limits
    _time_limits = True


@contextmanager
def time_limit(name: str) -> Iterator[None]:
    """Hold a task run in this process's main thread to the time limits, if they are enforced."""
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


def send_task(
    name: str,
    kwargs: dict[str, Any],
    *,
    task_id: str | None = None,
    expires: float | None = None,
    countdown: float | None = None,
) -> None:
    """Put a task on its queue, failing fast when the broker is down (the outbox retries)."""
    app.send_task(
        name,
        kwargs=kwargs,
        task_id=task_id,
        expires=expires,
        countdown=countdown,
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )
