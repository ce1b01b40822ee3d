"""Who hears about a story: the feeds it was or is in, and the partners whose filters it passes.

The domain rule, written once; the transport (``shared.outbox``) only carries the tasks.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.generations import Generation
from shared.models import Delivery, Partner, Story, utcnow
from shared.ninjs import story_to_ninjs
from shared.outbox import emit
from shared.stories import membership
from shared.tasknames import DELIVER, STORY_CHANGED
from shared.text import slugify

log = logging.getLogger(__name__)

# Deliveries are sent by their outbox task; the delivery sweep steps in after this.
DELIVERY_GRACE = timedelta(seconds=10)

STORY_EVENTS = ("story.published", "story.updated", "story.killed")

# Moved after every commit that changed a partner: a process keeps the enabled partners'
# filters while it stays put (and PARTNERS_TTL seconds at most), instead of reading them at
# every publish.
PARTNERS = Generation("newsroom:partners:generation", Partner)
PARTNERS_TTL = 30.0


@dataclass(frozen=True, slots=True)
class PartnerFilter:
    """An enabled partner's filters: what ``partner_matches`` reads."""

    id: int
    sections: list[str]
    tags: list[str]
    labels: list[str]


# (generation, when read (monotonic seconds), the enabled partners) as this process last read them.
_partners: tuple[int, float, list[PartnerFilter]] | None = None


def enabled_partners(session: Session) -> list[PartnerFilter]:
    """The enabled partners' filters, by id: kept while no partner changes anywhere."""
    global _partners
    generation = PARTNERS.current()  # read first: a change committed after it moves it on
    kept = _partners
    fresh = kept is not None and kept[0] == generation and time.monotonic() - kept[1] < PARTNERS_TTL
    if kept is not None and fresh and not PARTNERS.changed_in(session):
        return kept[2]
    read_at = time.monotonic()
    rows = session.execute(
        select(Partner.id, Partner.sections, Partner.tags, Partner.labels)
        .where(Partner.enabled.is_(True))
        .order_by(Partner.id)
    )
    partners = [PartnerFilter(row.id, row.sections or [], row.tags or [], row.labels or []) for row in rows]
    if generation is not None and not PARTNERS.changed_in(session):
        _partners = (generation, read_at, partners)
    return partners


def partner_matches(
    partner: Partner | PartnerFilter, story: Story, previous: dict[str, Any] | None = None
) -> bool:
    """Whether a story passes a partner's filters (any section, tag or label; none = all).

    ``previous`` is the story's membership before the change (``shared.stories.membership``):
    a partner that had the story hears of it leaving its filters too.
    """
    if not (partner.sections or partner.tags or partner.labels):
        return True
    sections = {slugify(s) for s in partner.sections}
    tags = {slugify(t) for t in partner.tags}
    labels = {label.lower() for label in partner.labels}
    memberships = [(story.section, [tag.slug for tag in story.tags], story.label_names)]
    if previous:
        before = (previous.get("section"), previous.get("tags") or [], previous.get("labels") or [])
        memberships.append(before)
    return any(
        (section is not None and slugify(section) in sections)
        or any(slug in tags for slug in story_tags)
        or any(label in labels for label in story_labels)
        for section, story_tags, story_labels in memberships
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
    body: str | None = None  # the payload, built for the first partner that gets it
    deliveries = []
    # A take-down goes to the partners that were told of the story, and only to them.
    told = (
        set(session.scalars(select(Delivery.partner_id).where(Delivery.story_id == story.id).distinct()))
        if event == "story.killed"
        else None
    )
    for partner in enabled_partners(session):
        if told is not None and partner.id not in told:
            continue
        if told is None and not partner_matches(partner, story, previous):
            continue
        if body is None:
            body = json.dumps(
                {
                    "type": event,
                    "timestamp": now.isoformat().replace("+00:00", "Z"),
                    "data": story_to_ninjs(story, settings=settings, pubstatus=pubstatus),
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
        delivery = Delivery(
            id=new_delivery_id(),
            partner_id=partner.id,
            story_id=story.id,
            story_revision=story.revision,
            event=event,
            payload=body,
            # Its task is queued after commit; the sweep steps in only if that is lost.
            next_attempt_at=now + DELIVERY_GRACE,
        )
        session.add(delivery)
        deliveries.append(delivery)
    if deliveries:
        session.flush()
    change = {
        "story_id": story.id,
        "revision": story.revision,
        "event": event,
        "previous": previous or {},
        # As this transaction leaves it: the feed flags at its commit need not read it again.
        "current": membership(story) | {"slug": story.slug},
    }
    emit(session, STORY_CHANGED, change, batch=True)
    for delivery in deliveries:
        emit(session, DELIVER, {"delivery_id": delivery.id})
    log.info("story %s r%s %s: %d deliveries", story.id, story.revision, event, len(deliveries))
    return deliveries
