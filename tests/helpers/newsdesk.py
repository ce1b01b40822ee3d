"""Helpers of the syndicate tests: stories in the pipeline's database, partners on loopback.

Everything here works on the running pipeline's database through the service functions,
with names and tags unique to each test (the database is shared by every test of a backend).
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from services.publish.service import publish_story, unpublish_story
from services.syndicate.partners import add_partner
from shared.db import session_scope
from shared.models import Delivery, Partner, Source, Story, StoryLabel
from shared.stories import set_tags
from shared.text import html_to_text, slugify
from tests.helpers.support import PartnerServer, Push, Reply

# Cyrillic, markup characters and emoji, in titles and bodies.
TRICKY_HEADLINE = "Київ & <Львів>: «ціни» 🎉 a < b"
TRICKY_BODY = "<p>Тіло &amp; <strong>більше</strong> 🎉</p><p>a &lt; b &gt; c</p>"


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def new_source() -> int:
    """A source to hang stories on."""
    with session_scope() as session:
        source = Source(name=unique("syndicate-wire"), format="ninjs")
        session.add(source)
        session.flush()
        return source.id


@dataclass(frozen=True)
class StoryRef:
    id: int
    slug: str
    headline: str


def insert_story(
    source_id: int,
    *,
    headline: str | None = None,
    body_html: str = TRICKY_BODY,
    tags: list[str] | None = None,
    labels: list[str] | None = None,
    section: str | None = None,
    author_name: str | None = None,
    picture: dict[str, Any] | None = None,
    lede: str | None = "Лід: a < b & c 🎉",
    status: str = "ingested",
    published_at: datetime | None = None,
) -> StoryRef:
    """A new story, as ingest would leave it (not yet published unless ``status`` says so)."""
    token = secrets.token_hex(5)
    headline = headline or f"{TRICKY_HEADLINE} {token}"
    slug = f"{slugify(headline)[:60]}-{token}"
    with session_scope() as session:
        story = Story(
            source_id=source_id,
            guid=f"urn:syndicate:{token}",
            slug=slug,
            status=status,
            revision=1,
            content_hash=token,
            headline=headline,
            lede=lede,
            body_html=body_html,
            # Sections are stored as slugs, as ingest and publish store them.
            body_text=html_to_text(body_html),
            language="uk",
            section=slugify(section) if section else None,
            author_name=author_name,
            author_slug=slugify(author_name) if author_name else None,
            picture=picture,
            published_at=published_at,
        )
        session.add(story)
        session.flush()
        set_tags(story, tags or [])
        story.labels = [StoryLabel(label=label) for label in labels or []]
        return StoryRef(story.id, slug, headline)


def publish(story_id: int, **kwargs: Any) -> str | None:
    """Publish (or republish) as an editor would; returns the event announced."""
    with session_scope() as session:
        return publish_story(session, story_id=story_id, actor="test", **kwargs).event


def edit_and_republish(story_id: int, **changes: Any) -> str | None:
    """Change a published story's fields and publish the change."""
    with session_scope() as session:
        story = session.get_one(Story, story_id)
        story.pending = {**(story.pending or {}), **changes}
    return publish(story_id)


def unpublish(story_id: int) -> str | None:
    with session_scope() as session:
        return unpublish_story(session, story_id=story_id, reason="test", actor="test").event


# ---------------------------------------------------------------------------------------------
# Partners


# The partner's webhook endpoint on loopback: records every request, answers as scripted.
Answer = Reply


class Hook(PartnerServer):
    """A PartnerServer whose scripted replies are called answers here."""

    def __init__(self, default: Answer | None = None) -> None:
        super().__init__(default)
        self.answers = self.replies


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@dataclass
class PartnerRef:
    id: int
    name: str
    secret: str
    tag: str


def new_partner(url: str, *, tag: str | None = None, **filters: Any) -> PartnerRef:
    """A partner that hears only stories with its own tag (or the filters given)."""
    tag = tag or unique("partner-tag")
    with session_scope() as session:
        if not filters:
            filters = {"tags": [tag]}
        partner = add_partner(session, name=unique("partner"), url=url, **filters)
        return PartnerRef(partner.id, partner.name, partner.secret, tag)


def disable_partner(partner_id: int) -> None:
    with session_scope() as session:
        session.get_one(Partner, partner_id).enabled = False


def new_delivery(
    partner: PartnerRef,
    story_id: int,
    *,
    version: int = 1,
    event: str = "story.published",
    next_attempt_at: datetime,
) -> str:
    """A pending delivery row no task was queued for (so only the test attempts it)."""
    delivery_id = f"msg_{secrets.token_hex(12)}"
    payload = json.dumps(
        {
            "type": event,
            "timestamp": "2025-07-18T16:16:00Z",
            "data": {
                "uri": f"urn:test:{story_id}",
                "version": str(version),
                "headlines": [{"role": "main", "value": TRICKY_HEADLINE}],
            },
        },
        ensure_ascii=False,
    )
    with session_scope() as session:
        session.add(
            Delivery(
                id=delivery_id,
                partner_id=partner.id,
                story_id=story_id,
                story_revision=version,
                event=event,
                payload=payload,
                next_attempt_at=next_attempt_at,
            )
        )
    return delivery_id


def delivery(delivery_id: str) -> Delivery:
    with session_scope(read_only=True) as session:
        row = session.get_one(Delivery, delivery_id)
        session.expunge(row)
        return row


def deliveries_of(partner_id: int, story_id: int | None = None) -> list[Delivery]:
    with session_scope(read_only=True) as session:
        query = select(Delivery).where(Delivery.partner_id == partner_id)
        if story_id is not None:
            query = query.where(Delivery.story_id == story_id)
        rows = list(session.scalars(query.order_by(Delivery.story_revision, Delivery.created_at)))
        for row in rows:
            session.expunge(row)
        return rows


def signature_ok(secret: str, push: Push) -> bool:
    """Whether a push carries a valid Standard Webhooks signature (at any timestamp)."""
    headers = push.headers
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], stamp, push.body)
    return expected in headers["webhook-signature"].split(" ") and _valid_base64(expected)


def _valid_base64(signature: str) -> bool:
    version, _, value = signature.partition(",")
    return version == "v1" and len(base64.b64decode(value)) == 32
