"""The scheduler: a loop that turns database times into tasks.

Schedules, embargoes, delivery retries and dirty feeds live in database
columns; this loop only notices what is due and queues the task that handles
it. Every such task is idempotent and claims its rows in SQL, so two schedulers
running by mistake publish nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from shared import retention
from shared.celery import send_task
from shared.db import session_scope
from shared.health import BEAT_EVERY, beat, stop_beating
from shared.models import Delivery, Feed, Page, Source, Story, utcnow
from shared.outbox import sweep
from shared.tasknames import POLL_SOURCE, PUBLISH_DUE, RENDER_FEEDS, SWEEP_DELIVERIES, TaskRef

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
# How often this scheduler asks whether the retention policy is due (it runs at most
# hourly, across every scheduler: shared.retention claims each run in Redis).
PRUNE_EVERY = 60.0
SLOW_TICK = 2.0


def tick() -> list[str]:
    """One pass: relay the outbox, then queue whatever is due; returns the tasks queued."""
    queued = []
    try:
        sweep()
    except Exception:
        log.warning("outbox sweep failed", exc_info=True)
    now = utcnow()
    with session_scope(read_only=True) as session:
        due = {
            PUBLISH_DUE: session.scalar(
                select(Story.id).where(Story.publish_at.is_not(None), Story.publish_at <= now).limit(1)
            ),
            SWEEP_DELIVERIES: session.scalar(
                select(Delivery.id)
                .where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
                .limit(1)
            ),
            RENDER_FEEDS: session.scalar(select(Feed.key).where(Feed.dirty_at.is_not(None)).limit(1))
            or session.scalar(select(Page.path).where(Page.dirty_at.is_not(None)).limit(1)),
        }
        polls = list(
            session.scalars(select(Source.id).where(Source.poll_url.is_not(None), Source.next_poll_at <= now))
        )
    for task, found in due.items():
        if found is not None:
            queued.append(task.name)
            _send(task, {})
    for source_id in polls:
        queued.append(POLL_SOURCE.name)
        _send(POLL_SOURCE, {"source_id": source_id})
    return queued


def _send(task: TaskRef, kwargs: dict[str, object]) -> None:
    try:
        # A tick not taken within a few seconds is replaced by the next one.
        send_task(task.name, kwargs, expires=10)
    except Exception as error:
        log.warning("could not queue %s: %s", task, error)


def run(stop: threading.Event | None = None, *, interval: float = TICK_SECONDS) -> None:
    """Tick until ``stop`` is set (or forever)."""
    stop = stop or threading.Event()
    log.info("scheduler running, every %.1fs", interval)
    last_prune = 0.0
    last_beat = 0.0
    while not stop.is_set():
        started = time.monotonic()
        if started - last_beat >= BEAT_EVERY:
            last_beat = started
            beat("scheduler")
        try:
            queued = tick()
            took = time.monotonic() - started
            if took > SLOW_TICK:
                log.warning("scheduler tick took %.1fs (queued %s)", took, ", ".join(queued) or "nothing")
            if started - last_prune > PRUNE_EVERY:
                last_prune = started
                retention.run_if_due()
        except Exception:
            log.exception("scheduler tick failed")
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    stop_beating("scheduler")
