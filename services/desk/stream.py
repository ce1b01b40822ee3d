"""Incoming, live: server-sent events woken by Redis, read from the database.

Every revision has a growing id; the stream's event ids are those ids. A wake-up on the
Redis channel (published after each commit that wrote a revision, by any process) makes
the stream read the revisions after the last one it sent; a reconnecting browser sends
``Last-Event-ID`` and gets whatever it missed. Without a wake-up the stream looks anyway
every few seconds, so a lost message costs seconds, never a story. No database session is
held while waiting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool

from services.desk import views
from services.desk.sessions import DeskSession, still_valid
from shared.changes import CHANNEL
from shared.config import get_settings
from shared.db import session_scope
from shared.models import utcnow
from shared.redis import redis_url

log = logging.getLogger(__name__)

LOOK_EVERY = 5.0
KEEPALIVE_EVERY = 15.0
RETRY_MS = 1000
# A stream ends after this long and the browser reconnects at once, catching up from its
# Last-Event-ID: a server that is stopping waits for open responses, and would wait for
# an open stream for as long as the page stays open.
LIFETIME = 25.0


def _changes(after: int, filters: views.Filters) -> views.Changes:
    with session_scope(read_only=True) as session:
        return views.changes_since(session, after, filters, get_settings().tz, utcnow())


def _event(event_id: int, name: str, data: dict[str, object]) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def incoming_events(
    desk: DeskSession, after: int, filters: views.Filters, render_row: Callable[[views.Row], str]
) -> AsyncIterator[str]:
    """The stream of rows for the incoming list, from the revision after ``after`` on."""
    client = aioredis.Redis.from_url(redis_url(), socket_connect_timeout=2, health_check_interval=15)
    pubsub = client.pubsub()
    last = after
    try:
        await pubsub.subscribe(CHANNEL)
        yield f"retry: {RETRY_MS}\n\n"
        started = quiet_since = time.monotonic()
        while True:
            changes = await run_in_threadpool(_changes, last, filters)
            for revision_id, story_id, shown in changes.rows:
                html = render_row(shown) if shown is not None else ""
                yield _event(revision_id, "story", {"id": story_id, "html": html})
                quiet_since = time.monotonic()
            last = changes.last
            if changes.more:
                continue
            left = LIFETIME - (time.monotonic() - started)
            if left <= 0:
                return
            woken = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(LOOK_EVERY, left))
            while woken is not None:  # a burst wakes once
                woken = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.01)
            if not await run_in_threadpool(still_valid, desk):
                yield "event: signed-out\ndata: {}\n\n"
                return
            if time.monotonic() - quiet_since > KEEPALIVE_EVERY:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
    finally:
        try:
            await pubsub.aclose()
            await client.aclose()
        except Exception:  # the connection may already be gone with the browser
            log.debug("desk stream: closing Redis failed", exc_info=True)
