"""Syndicate's Celery tasks: thin wrappers over the service and partner delivery."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from tenacity import retry, stop_after_attempt, wait_exponential

from services.syndicate import partners, service
from shared.celery import newsroom_task, send_task
from shared.config import get_settings
from shared.db import session_scope
from shared.models import utcnow

log = logging.getLogger(__name__)


@newsroom_task("syndicate.story_changed")
def story_changed(story_id: int, revision: int, event: str, previous: dict[str, Any]) -> None:
    """Flag the feeds a changed story was or is in, then render them."""
    with session_scope() as session:
        names = service.story_changed(session, story_id=story_id, previous=previous)
    log.info("story %s r%s %s: feeds %s", story_id, revision, event, ", ".join(names))
    service.render_dirty()


@newsroom_task("syndicate.render_feeds")
def render_feeds() -> None:
    """Render every dirty feed (the scheduler's sweep)."""
    service.render_dirty()


@newsroom_task("syndicate.deliver")
def deliver(delivery_id: str) -> None:
    """One attempt at a partner delivery."""
    partners.deliver(delivery_id)


@newsroom_task("syndicate.sweep_deliveries")
def sweep_deliveries() -> None:
    """Queue an attempt for each delivery whose next attempt is due."""
    with session_scope(read_only=True) as session:
        due = partners.due_deliveries(session, now=utcnow())
    for delivery_id in due:
        send_task("syndicate.deliver", {"delivery_id": delivery_id})


@newsroom_task("syndicate.ping_hubs")
def ping_hubs(urls: list[str]) -> None:
    """Tell every WebSub hub that these feeds changed."""
    for hub in get_settings().hubs:
        for url in urls:
            _ping(hub, url)


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def _ping(hub: str, url: str) -> None:
    response = httpx.post(hub, data={"hub.mode": "publish", "hub.topic": url, "hub.url": url}, timeout=10)
    response.raise_for_status()
    log.info("hub %s told of %s: %s", hub, url, response.status_code)
