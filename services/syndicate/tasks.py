"""Syndicate's Celery tasks: thin wrappers over the feed service and partner delivery."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from celery.signals import worker_process_shutdown, worker_shutdown
from sqlalchemy.orm import Session
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from services.syndicate import partners, service
from services.syndicate.outbound import drain_outbound, get_outbound
from shared.batches import run_batch
from shared.celery import send_task
from shared.config import get_settings
from shared.db import after_commit, session_scope
from shared.egress import redact_url
from shared.logs import CONSOLE
from shared.models import utcnow
from shared.outbox import finish
from shared.redis import get_redis
from shared.tasknames import DELIVER, PING_HUBS, RENDER_FEEDS, STORY_CHANGED, SWEEP_DELIVERIES
from shared.tasks import at_commit, batch_task, newsroom_task

log = logging.getLogger(__name__)

HUB_TIMEOUT = 10.0
# Story changes taken in one transaction by a batch run.
CHANGES_BATCH = 500
# A delivery queued by a sweep is not queued again by the next few sweeps.
SWEEP_QUEUED_SECONDS = 5


@newsroom_task(STORY_CHANGED)
def story_changed(**change: Any) -> None:
    """Flag the feeds that a changed story was or is in, and make sure a render round follows."""
    with session_scope() as session:
        names = service.stories_changed(session, [change])
        finish(session)
    _flagged([change], names)


@batch_task(STORY_CHANGED)
def stories_changed() -> None:
    """Flag the feeds of every story change waiting, in one transaction: in a burst, once for many."""
    changes: list[dict[str, Any]] = []
    names: list[str] = []

    def flag(session: Session, taken: list[dict[str, Any]]) -> None:
        changes.extend(taken)
        names.extend(service.stories_changed(session, changes))

    run_batch(STORY_CHANGED, limit=CHANGES_BATCH, finish=flag)
    _flagged(changes, names)


@at_commit(STORY_CHANGED)
def flag_at_commit(session: Session, changes: list[dict[str, Any]]) -> None:
    """Flag the feeds of the story changes a worker's transaction made, just before it commits."""
    names = service.stories_changed(session, changes, current=True)
    after_commit(session, lambda: _flagged(changes, names))


def _flagged(changes: list[dict[str, Any]], names: list[str]) -> None:
    if not changes:
        return
    stories = ", ".join(f"{c.get('story_id')} r{c.get('revision')} {c.get('event')}" for c in changes[:20])
    log.info("%d story changes (%s): feeds %s dirty", len(changes), stories, ", ".join(names[:50]))
    service.note_change(len(changes))
    _schedule_round(service.claim_round())


@newsroom_task(RENDER_FEEDS)
def render_feeds(scheduled: bool = False) -> None:
    """A render round: every dirty feed once (scheduled after a change, or by the sweep)."""
    outcome = service.run_round(scheduled=scheduled)
    if outcome.rendered:
        log.info("render round: %d feeds rendered", outcome.rendered, extra=CONSOLE)
    _schedule_round(outcome.retry_in)
    if outcome.later_in is not None:
        # An unscheduled round: it steps aside if a change has scheduled one by then.
        _schedule_round(outcome.later_in, scheduled=False)


def _schedule_round(delay: float | None, *, scheduled: bool = True) -> None:
    if delay is None:
        return
    # A short countdown, not a long one: if it is lost, the scheduler's sweep renders.
    send_task(RENDER_FEEDS.name, {"scheduled": scheduled}, countdown=max(0.0, delay), expires=30)


@newsroom_task(DELIVER)
def deliver(delivery_id: str) -> None:
    """Claim an attempt at a partner delivery and send it on this process's outbound loop."""
    # The sweep may queue it again from now on (a delivery put back for a busy partner).
    get_redis().delete(_queued_key(delivery_id))
    with session_scope() as session:
        attempt = partners.claim(session, delivery_id, now=utcnow())
        finish(session)
    if isinstance(attempt, str):
        log.info("delivery %s: %s", delivery_id, attempt)
        return

    async def send(client: httpx.AsyncClient) -> None:
        await partners.complete(client, attempt)

    get_outbound().submit(send, what=f"delivery {delivery_id} attempt {attempt.number}")


@newsroom_task(SWEEP_DELIVERIES)
def sweep_deliveries() -> None:
    """Queue an attempt for each delivery whose next attempt is due."""
    with session_scope(read_only=True) as session:
        due = partners.due_deliveries(session, now=utcnow())
    redis = get_redis()
    for delivery_id in due:
        # Sweeps come every half second; one queued attempt per delivery is enough.
        if redis.set(_queued_key(delivery_id), 1, nx=True, ex=SWEEP_QUEUED_SECONDS):
            send_task(DELIVER.name, {"delivery_id": delivery_id})


def _queued_key(delivery_id: str) -> str:
    return f"newsroom:delivery:{delivery_id}:queued"


@newsroom_task(PING_HUBS)
def ping_hubs(urls: list[str]) -> None:
    """Tell every WebSub hub that these feeds changed (on the outbound loop, so a slow hub waits alone)."""
    for hub in get_settings().hubs:
        for url in urls:

            async def ping(client: httpx.AsyncClient, hub: str = hub, url: str = url) -> None:
                await _ping(client, hub, url)

            get_outbound().submit(ping, what=f"hub {redact_url(hub)} ping for {url}")


async def _ping(client: httpx.AsyncClient, hub: str, url: str) -> None:
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=4),
        retry=retry_if_exception_type(httpx.HTTPError),
        reraise=True,
    ):
        with attempt:
            ping = {"hub.mode": "publish", "hub.topic": url, "hub.url": url}
            response = await client.post(hub, data=ping, timeout=HUB_TIMEOUT)
            response.raise_for_status()
    log.info("hub %s told of %s: %s", redact_url(hub), url, response.status_code)


@worker_shutdown.connect  # type: ignore[untyped-decorator]  # a solo worker
@worker_process_shutdown.connect  # type: ignore[untyped-decorator]  # a prefork child
def _finish_outbound(**_: Any) -> None:
    # A delivery cut off here is tried again when its lease ends; hub pings are best effort.
    drain_outbound(timeout=5.0)
