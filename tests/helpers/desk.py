"""The publish desk's test helpers: stories straight into the pipeline's database, and what became of them."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from services.syndicate.partners import add_partner
from shared.db import session_scope
from shared.models import Delivery, Partner, Revision, Source, Story, utcnow
from shared.stories import add_revision, set_labels, set_tags
from shared.text import html_to_text, slugify
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import PartnerServer, text_of, wait_for

__all__ = ["Desk", "TaggedPartner", "make_desk", "tagged_partner", "text_of"]


@dataclass
class TaggedPartner:
    """A real loopback partner whose filter matches only stories with its tag."""

    server: PartnerServer
    tag: str
    secret: str
    partner_id: int
    name: str

    def events(self, slug: str) -> list[str]:
        """The events this partner received for a story, each checked against its signature."""
        found = []
        for push in list(self.server.pushes):
            payload = Webhook(self.secret).verify(push.body, push.headers)
            if payload["data"]["uri"].endswith(f"/stories/{slug}"):
                found.append(payload["type"])
        return found

    def delivery_events(self, story_id: int) -> list[str]:
        """The delivery rows written for this partner and story, oldest first."""
        with session_scope(read_only=True) as session:
            return list(
                session.scalars(
                    select(Delivery.event)
                    .where(Delivery.partner_id == self.partner_id, Delivery.story_id == story_id)
                    .order_by(Delivery.created_at, Delivery.story_revision)
                )
            )


@dataclass
class Desk:
    """Make stories, drive the editor's API, and read the database's answers."""

    pipeline: Pipeline
    headers: dict[str, str]
    source_id: int
    tag: str = field(default_factory=lambda: f"desk-{secrets.token_hex(4)}")

    def story(self, **fields: Any) -> int:
        """A new ingested story (by default with a headline, lede, body and this desk's tag)."""
        token = secrets.token_hex(5)
        headline = fields.pop("headline", f"Desk story {token}")
        body_html = fields.pop("body_html", f"<p>Body of {token}.</p>")
        tags = fields.pop("tags", [self.tag])
        labels = fields.pop("labels", [])
        with session_scope() as session:
            story = Story(
                source_id=self.source_id,
                guid=f"urn:desk:{token}",
                slug=f"{slugify(headline)}-{token}",
                status="ingested",
                revision=1,
                content_hash=token,
                headline=headline,
                lede=fields.pop("lede", f"Lede of {token}"),
                body_html=body_html,
                body_text=html_to_text(body_html),
                language="en",
                **fields,
            )
            session.add(story)
            session.flush()
            set_tags(story, tags)
            set_labels(story, set(labels))
            add_revision(session, story, "ingested", actor="test")
            return story.id

    def publish(self, story_id: int, expect: int = 202, **body: Any) -> dict[str, Any]:
        answer = self.pipeline.client.post(f"/v1/stories/{story_id}/publish", headers=self.headers, json=body)
        assert answer.status_code == expect, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def unpublish(self, story_id: int, expect: int = 202, **body: Any) -> dict[str, Any]:
        body.setdefault("reason", "test")
        answer = self.pipeline.client.post(
            f"/v1/stories/{story_id}/unpublish", headers=self.headers, json=body
        )
        assert answer.status_code == expect, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def patch(self, story_id: int, expect: int = 200, **changes: Any) -> dict[str, Any]:
        answer = self.pipeline.client.patch(f"/v1/stories/{story_id}", headers=self.headers, json=changes)
        assert answer.status_code == expect, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def get(self, story_id: int) -> dict[str, Any]:
        answer = self.pipeline.client.get(f"/v1/stories/{story_id}", headers=self.headers)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def page(self, slug: str) -> tuple[int, str]:
        """A story page's status and visible text."""
        answer = self.pipeline.client.get(f"/stories/{slug}")
        return answer.status_code, text_of(answer.text)

    def page_when(self, slug: str, check: Callable[[int, str], bool], what: str) -> tuple[int, str]:
        """A story page once it shows the last change: pages follow a change in the render
        round that follows it, as the feeds do."""

        def shown() -> tuple[int, str] | None:
            status, text = self.page(slug)
            return (status, text) if check(status, text) else None

        return wait_for(shown, what=what)

    def front_when(self, check: Callable[[str], bool], what: str) -> str:
        """The front page's HTML once ``check`` holds (it follows changes like the feeds)."""

        def shown() -> str | None:
            html = self.pipeline.client.get("/").text
            return html if check(html) else None

        return wait_for(shown, what=what)


def row(story_id: int) -> Story:
    """The story as the database has it now."""
    with session_scope(read_only=True) as session:
        story = session.get_one(Story, story_id)
        story.tags, story.labels  # noqa: B018 — loaded before the session closes
        session.expunge(story)
        return story


def actions(story_id: int) -> list[tuple[int, str, str | None, str | None]]:
    """The story's revision history: (number, action, actor, note)."""
    with session_scope(read_only=True) as session:
        rows = session.execute(
            select(Revision.number, Revision.action, Revision.actor, Revision.note)
            .where(Revision.story_id == story_id)
            .order_by(Revision.number)
        )
        return [(r.number, r.action, r.actor, r.note) for r in rows]


def revision_times(story_id: int, action: str) -> list[datetime]:
    with session_scope(read_only=True) as session:
        return list(
            session.scalars(
                select(Revision.created_at).where(Revision.story_id == story_id, Revision.action == action)
            )
        )


def utc_iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def make_desk(pipeline: Pipeline) -> Desk:
    """An editor's desk with its own source."""
    with session_scope() as session:
        source = Source(name=f"desk-{secrets.token_hex(4)}")
        session.add(source)
        session.flush()
        source_id = source.id
    return Desk(pipeline=pipeline, headers=pipeline.token("editor"), source_id=source_id)


@contextmanager
def tagged_partner(desk: Desk) -> Iterator[TaggedPartner]:
    """A partner that receives only the desk's stories, disabled afterwards."""
    server = PartnerServer()
    with session_scope() as session:
        created = add_partner(
            session, name=f"partner-{secrets.token_hex(4)}", url=server.url, tags=[desk.tag]
        )
        tagged = TaggedPartner(
            server=server, tag=desk.tag, secret=created.secret, partner_id=created.id, name=created.name
        )
    try:
        yield tagged
    finally:
        with session_scope() as session:
            session.get_one(Partner, tagged.partner_id).enabled = False
        server.close()


WORKER = ("worker", "-c", "2", "--loglevel", "INFO")


def soon(seconds: float) -> datetime:
    return (utcnow() + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(seconds=1)


def watch_until_published(desk: Desk, story_ids: list[int], at: datetime, timeout: float = 30) -> None:
    """Poll until every story is published, failing if any is seen published before ``at``."""

    def all_published() -> bool:
        statuses = [desk.get(story_id)["status"] for story_id in story_ids]
        seen_at = utcnow()
        if seen_at < at:
            assert statuses == ["scheduled"] * len(story_ids), "published before its time"
        return statuses == ["published"] * len(story_ids)

    wait_for(all_published, timeout=timeout, interval=0.1, what=f"stories {story_ids} published")


def assert_published_once(desk: Desk, partner: TaggedPartner, story_id: int, at: datetime) -> None:
    story = row(story_id)
    assert story.published_at is not None and story.published_at >= at
    assert [a for _, a, _, _ in actions(story_id)].count("published") == 1
    assert all(when >= at for when in revision_times(story_id, "published"))
    assert partner.delivery_events(story_id) == ["story.published"]
    wait_for(lambda: partner.events(story.slug) == ["story.published"], what=f"story {story_id} pushed")
