"""Publish: the editor's decisions made exact (times, labels, schedules, take-downs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound, SkipEvent, Unprocessable
from shared.events import announce_story
from shared.models import Story, utcnow
from shared.stories import (
    CONTENT_FIELDS,
    LABELS,
    SUBSTANTIVE_FIELDS,
    add_revision,
    jsonable,
    membership,
    set_labels,
    set_tags,
)
from shared.text import clean_headline, clean_text, html_to_text, sanitize_html, slugify

log = logging.getLogger(__name__)

EDITABLE_FIELDS = ("headline", "lede", "body_html", "byline", "author_name", "author_bio",
                   "section", "tags", "language", "source_url", "disclaimer")  # fmt: skip
_DATETIME_FIELDS = ("first_created", "version_created", "embargo_until")


@dataclass
class PublishOutcome:
    """What a publish did: the story's status and the event it announced, if any."""

    story: Story
    event: str | None


def get_story(session: Session, story_id: int, *, lock: bool = False) -> Story:
    """The story, locked for update when asked (PostgreSQL; SQLite has one writer anyway)."""
    query = select(Story).where(Story.id == story_id).execution_options(populate_existing=True)
    story = session.scalars(query.with_for_update() if lock else query).first()
    if story is None:
        raise NotFound(f"story {story_id} not found")
    return story


def _check_version(story: Story, expected_version: int | None) -> None:
    if expected_version is not None and story.revision != expected_version:
        raise Conflict(f"story {story.id} is at version {story.revision}, not {expected_version}")


def _apply_pending(story: Story) -> set[str]:
    """Move waiting edits into the story; return the names of fields that changed."""
    pending = dict(story.pending or {})
    pending.pop("_publish", None)
    changed = set()
    for name, value in pending.items():
        if name == "tags":
            if value != story.tag_names:
                set_tags(story, value)
                changed.add(name)
        elif name == "labels":
            wanted = {row.label for row in story.labels if row.label != "opinion"} | set(value)
            if wanted != set(story.label_names):
                set_labels(story, wanted)
                changed.add(name)
        elif name in CONTENT_FIELDS:
            if name in _DATETIME_FIELDS and isinstance(value, str):
                value = datetime.fromisoformat(value)
            if getattr(story, name) != value:
                setattr(story, name, value)
                changed.add(name)
    story.pending = None
    return changed


def publish_story(
    session: Session,
    *,
    story_id: int,
    actor: str | None,
    labels: list[str] | None = None,
    at: datetime | None = None,
    expected_version: int | None = None,
    silent: bool = False,
    note: str | None = None,
    now: datetime | None = None,
) -> PublishOutcome:
    """Publish now, schedule for ``at`` (or the embargo), or republish an update."""
    now = now or utcnow()
    if at is not None and at.tzinfo is None:
        raise Unprocessable("at: a time needs a UTC offset")
    wanted_labels = _editor_labels(labels)
    story = get_story(session, story_id, lock=True)
    _check_version(story, expected_version)
    previous = membership(story)

    when = at or now
    if story.embargo_until is not None and story.embargo_until > when:
        when = story.embargo_until
    if when > now:
        return _schedule(session, story, when, actor=actor, labels=labels, silent=silent, note=note)

    changed = _apply_pending(story)
    if not story.headline.strip() or not story.body_html.strip():
        raise Unprocessable(f"story {story.id} has no headline or no body")
    label_set = set(story.label_names)
    if wanted_labels is not None:
        label_set = (label_set - {"exclusive", "breaking"}) | wanted_labels
    if story.genre and story.genre.lower() == "opinion":
        label_set.add("opinion")

    if story.published_at is None:
        event = "story.published"
        story.published_at = min(at, now) if at is not None else now
    elif story.status != "published":
        event = "story.published"  # back after an unpublish; its first time stays
    else:
        if not changed and label_set == set(story.label_names) and note is None:
            raise SkipEvent(f"story {story.id} is published and unchanged")
        event = "story.updated"
        story.updated_at = now
        if changed & set(SUBSTANTIVE_FIELDS) and not silent:
            label_set.add("updated")
    if note:
        story.correction_note = note
    set_labels(story, label_set)
    story.status = "published"
    story.publish_at = None
    story.revision += 1
    session.flush()
    add_revision(session, story, event.removeprefix("story."), actor=actor, note=note)
    announce_story(session, story, event, previous=previous)
    log.info("story %s r%s %s by %s", story.id, story.revision, event, actor)
    return PublishOutcome(story=story, event=event)


def _editor_labels(labels: list[str] | None) -> set[str] | None:
    if labels is None:
        return None
    wanted = {label.strip().lower() for label in labels}
    unknown = wanted - set(LABELS)
    if unknown:
        raise Unprocessable(f"labels: unknown {', '.join(sorted(unknown))}; use {', '.join(LABELS)}")
    return wanted - {"updated"}


def _schedule(
    session: Session, story: Story, when: datetime, *, actor: str | None,
    labels: list[str] | None, silent: bool, note: str | None,
) -> PublishOutcome:  # fmt: skip
    if story.status != "published":
        story.status = "scheduled"
    story.publish_at = when
    story.pending = {**(story.pending or {}), "_publish": {
        "labels": labels, "silent": silent, "note": note, "actor": actor}}  # fmt: skip
    story.revision += 1
    session.flush()
    add_revision(session, story, "scheduled", actor=actor, note=f"at {when.isoformat()}")
    log.info("story %s scheduled for %s by %s", story.id, when.isoformat(), actor)
    return PublishOutcome(story=story, event=None)


def publish_due(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[int]:
    """Publish every story whose time has come; exactly once, even with two schedulers."""
    now = now or utcnow()
    due = list(session.scalars(
        select(Story.id).where(Story.publish_at.is_not(None), Story.publish_at <= now)
        .order_by(Story.publish_at).limit(limit)
    ))  # fmt: skip
    published = []
    for story_id in due:
        story = get_story(session, story_id, lock=True)
        # Re-read under the lock: another scheduler may have published it already.
        if story.publish_at is None or story.publish_at > now:
            continue
        params = (story.pending or {}).get("_publish") or {}
        story.publish_at = None
        try:
            publish_story(
                session, story_id=story.id, actor=params.get("actor") or "scheduler",
                labels=params.get("labels"), silent=bool(params.get("silent")),
                note=params.get("note"), now=max(now, story.embargo_until or now),
            )  # fmt: skip
        except SkipEvent:
            pass
        published.append(story.id)
    return published


def unpublish_story(session: Session, *, story_id: int, reason: str, actor: str | None) -> PublishOutcome:
    """Take a story down everywhere; a second unpublish changes nothing."""
    if not reason or not reason.strip():
        raise Unprocessable("reason: say why the story is taken down")
    story = get_story(session, story_id, lock=True)
    if story.status in ("unpublished", "ingested"):
        return PublishOutcome(story=story, event=None)
    previous = membership(story)
    was_public = story.status == "published"
    story.status = "unpublished" if was_public else "ingested"
    story.publish_at = None
    story.unpublished_at = utcnow() if was_public else None
    story.revision += 1
    session.flush()
    add_revision(session, story, "unpublished" if was_public else "unscheduled", actor=actor, note=reason)
    event = None
    if was_public:
        event = "story.killed"
        announce_story(session, story, event, previous=previous)
    log.info("story %s unpublished by %s: %s", story.id, actor, reason)
    return PublishOutcome(story=story, event=event)


def edit_story(
    session: Session, *, story_id: int, changes: dict[str, Any], expected_version: int | None,
    actor: str | None,
) -> Story:  # fmt: skip
    """A new revision; a published story shows it only after the next publish."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise Unprocessable(
            f"cannot edit {', '.join(sorted(unknown))}; editable: {', '.join(EDITABLE_FIELDS)}"
        )
    clean = _clean_changes(changes)
    story = get_story(session, story_id, lock=True)
    _check_version(story, expected_version)
    if story.status in ("published", "scheduled"):
        story.pending = jsonable({**(story.pending or {}), **clean})
    else:
        story.pending = {**clean, "_publish": (story.pending or {}).get("_publish")}
        _apply_pending(story)
    story.revision += 1
    session.flush()
    add_revision(session, story, "edited", actor=actor, note=", ".join(sorted(clean)))
    return story


def _clean_changes(changes: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "tags":
            if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
                raise Unprocessable("tags: a list of strings")
            clean["tags"] = [clean_headline(tag) for tag in value]
            continue
        if value is not None and not isinstance(value, str):
            raise Unprocessable(f"{name}: a string")
        if name == "headline":
            if not value or not clean_headline(value):
                raise Unprocessable("headline: must not be empty")
            clean[name] = clean_headline(value)
        elif name == "body_html":
            body = sanitize_html(value or "")
            if not html_to_text(body).strip():
                raise Unprocessable("body_html: must not be empty")
            clean[name] = body
            clean["body_text"] = html_to_text(body)
        elif name == "author_name":
            clean[name] = clean_headline(value) if value else None
            clean["author_slug"] = slugify(value) if value else None
        else:
            clean[name] = clean_text(value) if value else None
    return clean


def list_stories(
    session: Session, *, status: str | None = None, section: str | None = None,
    q: str | None = None, limit: int = 50, offset: int = 0,
) -> list[Story]:  # fmt: skip
    """The editor's list, newest first."""
    query = select(Story).order_by(Story.id.desc()).limit(min(limit, 200)).offset(offset)
    if status:
        query = query.where(Story.status == status)
    if section:
        query = query.where(Story.section == section)
    if q:
        pattern = f"%{q}%"
        query = query.where(or_(Story.headline.ilike(pattern), Story.guid.ilike(pattern)))
    return list(session.scalars(query))
