"""The transactional outbox: a change and the tasks announcing it commit together.

``emit`` adds an outbox row in the caller's transaction; right after commit the
rows are relayed to Celery and marked sent. If the process or Redis dies in
between, the scheduler's sweep re-sends whatever is still pending, so work is
delivered at least once and every task is idempotent.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db import after_commit, session_scope
from shared.models import Delivery, OutboxEvent, Partner, Story, utcnow
from shared.ninjs import story_to_ninjs
from shared.text import slugify

log = logging.getLogger(__name__)

# The sweep leaves an event alone this long, so the post-commit relay is not doubled.
RELAY_GRACE = timedelta(seconds=10)
# A claimed event that was not marked sent within this lease is sent again.
RELAY_LEASE = timedelta(seconds=30)

STORY_EVENTS = ("story.published", "story.updated", "story.killed")


def emit(session: Session, task: str, **kwargs: Any) -> OutboxEvent:
    """Write a task to the outbox in the current transaction; it is sent after commit."""
    event = OutboxEvent(task=task, kwargs=kwargs, next_try_at=utcnow() + RELAY_GRACE)
    session.add(event)
    session.flush()
    pending: list[int] = session.info.setdefault("outbox_ids", [])
    if not pending:
        after_commit(session, lambda: _relay_quietly(pending))
    pending.append(event.id)
    return event


def _relay_quietly(ids: list[int]) -> None:
    relay(list(ids))


def relay(ids: list[int]) -> int:
    """Send the given outbox events to the broker and mark them sent; returns how many."""
    if not ids:
        return 0
    from shared.celery import send_task

    with session_scope() as session:
        events = session.scalars(
            select(OutboxEvent).where(OutboxEvent.id.in_(ids), OutboxEvent.sent_at.is_(None))
        ).all()
        sent = []
        for event in events:
            try:
                send_task(event.task, event.kwargs, task_id=f"outbox-{event.id}-{event.attempts}")
            except Exception as error:  # broker down: the sweep tries again
                log.warning("outbox %s: broker unavailable: %s", event.id, error)
                break
            sent.append(event.id)
        if sent:
            session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(sent)).values(sent_at=utcnow()))
    return len(sent)


def sweep(limit: int = 500) -> int:
    """Re-send outbox events still pending after the grace period (run by the scheduler)."""
    now = utcnow()
    with session_scope() as session:
        query = (
            select(OutboxEvent.id)
            .where(OutboxEvent.sent_at.is_(None), OutboxEvent.next_try_at <= now)
            .order_by(OutboxEvent.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list(session.scalars(query))
        if ids:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(ids))
                .values(next_try_at=now + RELAY_LEASE, attempts=OutboxEvent.attempts + 1)
            )
    if ids:
        log.info("outbox sweep: re-sending %d events", len(ids))
    return relay(ids)


def partner_matches(partner: Partner, story: Story) -> bool:
    """Whether a story passes a partner's filters (any section, tag or label; none = all)."""
    if not (partner.sections or partner.tags or partner.labels):
        return True
    sections = {slugify(s) for s in partner.sections}
    tags = {slugify(t) for t in partner.tags}
    labels = {label.lower() for label in partner.labels}
    return (
        (story.section is not None and slugify(story.section) in sections)
        or any(tag.slug in tags for tag in story.tags)
        or any(label in labels for label in story.label_names)
    )


def new_delivery_id() -> str:
    """A webhook-id: unique, and the same on every retry and replay of the delivery."""
    return f"msg_{secrets.token_hex(12)}"


def announce_story(
    session: Session, story: Story, event: str, *, previous: dict[str, Any] | None = None
) -> list[Delivery]:
    """Announce a published, updated or killed story: feeds to refresh and partner deliveries.

    The delivery rows are written in the caller's transaction, so a story change
    can never commit without them.
    """
    if event not in STORY_EVENTS:
        raise ValueError(f"unknown story event {event!r}")
    settings = get_settings()
    now = utcnow()
    pubstatus = "canceled" if event == "story.killed" else "usable"
    body = json.dumps(
        {
            "type": event,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": story_to_ninjs(story, settings=settings, pubstatus=pubstatus),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    deliveries = []
    for partner in session.scalars(select(Partner).where(Partner.enabled.is_(True))):
        if not partner_matches(partner, story):
            continue
        delivery = Delivery(
            id=new_delivery_id(),
            partner_id=partner.id,
            story_id=story.id,
            story_revision=story.revision,
            event=event,
            payload=body,
            # Its task is queued after commit; the sweep steps in only if that is lost.
            next_attempt_at=now + RELAY_GRACE,
        )
        session.add(delivery)
        deliveries.append(delivery)
    session.flush()
    emit(
        session,
        "syndicate.story_changed",
        story_id=story.id,
        revision=story.revision,
        event=event,
        previous=previous or {},
    )
    for delivery in deliveries:
        emit(session, "syndicate.deliver", delivery_id=delivery.id)
    log.info("story %s r%s %s: %d deliveries", story.id, story.revision, event, len(deliveries))
    return deliveries
