"""Publish: the editor's decisions made exact (times, labels, schedules, take-downs).

A story moves ingested → scheduled → published → (updated …) → unpublished, and
every move is a revision saying who, when and why. Each function here locks the
story's row, checks the editor's ``expected_version``, and bumps ``revision``; the
ORM's version check (``WHERE revision = <the one read>``) backs the lock up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.announce import announce_story
from shared.errors import Conflict, NotFound, PermanentError, SkipEvent, Unprocessable
from shared.logs import CONSOLE
from shared.models import Revision, Story, utcnow
from shared.stories import (
    CONTENT_FIELDS,
    EDITOR_LABELS,
    LABELS,
    SUBSTANTIVE_FIELDS,
    add_revision,
    jsonable,
    membership,
    set_labels,
    set_tags,
    written_story,
)
from shared.text import MarkupTooDeep, clean_headline, clean_text, html_to_text, sanitize_html, slugify

log = logging.getLogger(__name__)

STATUSES = ("ingested", "scheduled", "published", "unpublished")
EDITABLE_FIELDS = (
    "headline",
    "lede",
    "body_html",
    "byline",
    "author_name",
    "author_bio",
    "section",
    "tags",
    "language",
    "source_url",
    "disclaimer",
)
_DATETIME_FIELDS = ("first_created", "version_created", "embargo_until")
# Where a scheduled publish keeps the editor's choices until its time comes.
_PUBLISH_KEY = "_publish"
# Revisions that put a version of the story in front of readers.
_PUBLIC_ACTIONS = ("published", "updated")


@dataclass
class PublishOutcome:
    """What a publish did: the story as it now is and the event it announced, if any."""

    story: Story
    event: str | None


def get_story(session: Session, story_id: int, *, lock: bool = False) -> Story:
    """The story, locked for update when asked (PostgreSQL; SQLite has one writer anyway).

    A story this transaction has just written is locked already, and taken as it is.
    """
    if lock and (written := written_story(session, story_id)) is not None:
        return written
    query = select(Story).where(Story.id == story_id).execution_options(populate_existing=True)
    story = session.scalars(query.with_for_update() if lock else query).first()
    if story is None:
        raise NotFound(f"story {story_id} not found")
    return story


def _check_version(story: Story, expected_version: int | None) -> None:
    if expected_version is not None and story.revision != expected_version:
        raise Conflict(f"story {story.id} is at version {story.revision}, not {expected_version}")


def _pending_value(story: Story, name: str) -> Any:
    """A field as it will be once the waiting edits are applied."""
    pending = story.pending or {}
    value = pending[name] if name in pending else getattr(story, name)
    if name in _DATETIME_FIELDS and isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value


def _check_publishable(story: Story) -> None:
    headline = _pending_value(story, "headline") or ""
    # The text is stored beside the HTML (ingest and edits derive it); the HTML is read again
    # only where the text is missing or may not be the HTML's.
    pending = story.pending or {}
    stale = "body_html" in pending and "body_text" not in pending
    text = None if stale else _pending_value(story, "body_text")
    text = text or html_to_text(_pending_value(story, "body_html") or "")
    if not headline.strip() or not text.strip():
        raise Unprocessable(f"story {story.id} has no headline or no body; edit it before publishing")


def _apply_pending(story: Story) -> set[str]:
    """Move waiting edits into the story; return the names of fields that changed."""
    pending = dict(story.pending or {})
    pending.pop(_PUBLISH_KEY, None)
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


def _changed_since_public(session: Session, story: Story) -> set[str]:
    """Substantive fields that differ from the version readers last saw."""
    snapshot = session.scalar(
        select(Revision.snapshot)
        .where(Revision.story_id == story.id, Revision.action.in_(_PUBLIC_ACTIONS))
        .order_by(Revision.number.desc())
        .limit(1)
    )
    if snapshot is None:
        return set()
    return {name for name in SUBSTANTIVE_FIELDS if snapshot.get(name) != getattr(story, name)}


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
    automatic: bool = False,
) -> PublishOutcome:
    """Publish now, schedule for ``at`` (or the embargo), or republish an update.

    ``automatic`` is a source's auto-publish: it never brings back a story an editor
    took down, nor jumps a schedule an editor set. Raises SkipEvent when there is
    nothing to do; the caller rolls back.
    """
    now = now or utcnow()
    if at is not None:
        if at.utcoffset() is None:
            raise Unprocessable("at: a time needs a UTC offset")
        at = at.astimezone(UTC)
    wanted_labels = _editor_labels(labels)
    note = (clean_text(note).strip() or None) if note else None
    story = get_story(session, story_id, lock=True)
    _check_version(story, expected_version)
    if automatic:
        _check_automatic(session, story, actor)
    _check_publishable(story)

    # Never before the embargo, whatever the editor asked for (the wire may have moved it).
    when = at or now
    embargo = _pending_value(story, "embargo_until")
    if embargo is not None and embargo > when:
        when = embargo
    if when > now:
        return _schedule(session, story, when, actor=actor, labels=labels, silent=silent, note=note)

    previous = membership(story)
    was_public = story.status == "published"
    changed = _apply_pending(story)
    if story.published_at is not None and not was_public:
        # Back after an unpublish: what counts is what readers saw last.
        changed |= _changed_since_public(session, story)
    label_set = set(story.label_names)
    if wanted_labels is not None:
        label_set = (label_set - set(EDITOR_LABELS)) | wanted_labels
    if story.genre and story.genre.lower() == "opinion":
        label_set.add("opinion")
    content_changed = bool(changed - {"labels"})
    new_note = note is not None and note != story.correction_note

    if story.published_at is None:
        event = "story.published"
        # An ``at`` in the past backdates, but never to before the embargo.
        story.published_at = when
    else:
        if was_public and not content_changed and not new_note and label_set == set(story.label_names):
            raise SkipEvent(f"story {story.id} is published and unchanged")
        # Back after an unpublish, partners were told "killed": they need it whole again.
        event = "story.updated" if was_public else "story.published"
        if content_changed or new_note:
            story.updated_at = now
            if changed & set(SUBSTANTIVE_FIELDS) and not silent:
                label_set.add("updated")
    if new_note:
        story.correction_note = note
    set_labels(story, label_set)
    story.status = "published"
    story.publish_at = None
    story.unpublished_at = None
    story.revision += 1
    # Flushed with the revision (the version compared in SQL there).
    add_revision(session, story, event.removeprefix("story."), actor=actor, note=note)
    announce_story(session, story, event, previous=previous)
    log.info(
        "story %s r%s %s by %s: %s", story.id, story.revision, event, actor, story.headline, extra=CONSOLE
    )
    return PublishOutcome(story=story, event=event)


def _check_automatic(session: Session, story: Story, actor: str | None) -> None:
    if story.status == "unpublished":
        raise SkipEvent(f"story {story.id} was unpublished; {actor} does not bring it back")
    if story.status == "scheduled" and _publish_params(session, story).get("actor") != actor:
        raise SkipEvent(f"story {story.id} is scheduled by an editor; {actor} waits for it")


def _editor_labels(labels: list[str] | None) -> set[str] | None:
    if labels is None:
        return None
    wanted = {label.strip().lower() for label in labels}
    unknown = wanted - set(LABELS)
    if unknown:
        raise Unprocessable(f"labels: unknown {', '.join(sorted(unknown))}; use {', '.join(EDITOR_LABELS)}")
    automatic = wanted - set(EDITOR_LABELS)
    if automatic:
        raise Unprocessable(
            f"labels: {', '.join(sorted(automatic))} is set by the newsroom (opinion for columns and "
            f"opinion pieces, updated by publishing a changed story); editors set {', '.join(EDITOR_LABELS)}"
        )
    return wanted


def _schedule(
    session: Session,
    story: Story,
    when: datetime,
    *,
    actor: str | None,
    labels: list[str] | None,
    silent: bool,
    note: str | None,
) -> PublishOutcome:
    if story.status != "published":
        story.status = "scheduled"
    story.publish_at = when
    story.pending = {
        **(story.pending or {}),
        _PUBLISH_KEY: {"labels": labels, "silent": silent, "note": note, "actor": actor},
    }
    story.revision += 1
    session.flush()
    add_revision(session, story, "scheduled", actor=actor, note=f"at {when.isoformat()}")
    log.info(
        "story %s r%s scheduled for %s by %s",
        story.id,
        story.revision,
        when.isoformat(),
        actor,
        extra=CONSOLE,
    )
    return PublishOutcome(story=story, event=None)


def _unschedule(session: Session, story: Story, *, actor: str | None, note: str) -> None:
    """Forget a story's schedule; a story that was never public goes back to the desk."""
    if story.status == "scheduled":
        story.status = "unpublished" if story.published_at is not None else "ingested"
    story.publish_at = None
    pending = {k: v for k, v in (story.pending or {}).items() if k != _PUBLISH_KEY}
    story.pending = pending or None
    story.revision += 1
    session.flush()
    add_revision(session, story, "unscheduled", actor=actor, note=note)
    log.info("story %s r%s unscheduled by %s: %s", story.id, story.revision, actor, note)


def _publish_params(session: Session, story: Story) -> dict[str, Any]:
    """The editor's choices for a scheduled publish, also when a wire update replaced ``pending``."""
    params = (story.pending or {}).get(_PUBLISH_KEY)
    if params is None:
        snapshot = session.scalar(
            select(Revision.snapshot)
            .where(Revision.story_id == story.id, Revision.action == "scheduled")
            .order_by(Revision.number.desc())
            .limit(1)
        )
        params = ((snapshot or {}).get("pending") or {}).get(_PUBLISH_KEY)
    return dict(params or {})


def publish_scheduled(
    session: Session, *, story_id: int, now: datetime | None = None
) -> PublishOutcome | None:
    """Publish one scheduled story if its time has come; None when it is not (or no longer) due."""
    now = now or utcnow()
    # Another scheduler's task holding the row is publishing it: leave it alone.
    story = session.scalars(
        select(Story)
        .where(Story.id == story_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()
    # Read under the lock: the other one may have published it already.
    if story is None or story.publish_at is None or story.publish_at > now:
        return None
    params = _publish_params(session, story)
    scheduled_by = params.get("actor")
    actor = f"scheduler for {scheduled_by}" if scheduled_by else "scheduler"
    try:
        with session.begin_nested():
            return publish_story(
                session,
                story_id=story.id,
                actor=actor,
                labels=params.get("labels"),
                silent=bool(params.get("silent")),
                note=params.get("note"),
                now=now,
            )
    except (SkipEvent, PermanentError) as error:
        # A failed schedule must not stay due and be retried on every tick.
        story = get_story(session, story_id, lock=True)
        _unschedule(session, story, actor=actor, note=f"not published: {error.detail}")
        return PublishOutcome(story=story, event=None)


def publish_due(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[int]:
    """Publish every story whose time has come; exactly once, even with two schedulers."""
    now = now or utcnow()
    due = list(
        session.scalars(
            select(Story.id)
            .where(Story.publish_at.is_not(None), Story.publish_at <= now)
            .order_by(Story.publish_at, Story.id)
            .limit(limit)
        )
    )
    published = []
    for story_id in due:
        outcome = publish_scheduled(session, story_id=story_id, now=now)
        if outcome is not None and outcome.event is not None:
            published.append(story_id)
    return published


def unpublish_story(
    session: Session,
    *,
    story_id: int,
    reason: str,
    actor: str | None,
    expected_version: int | None = None,
    now: datetime | None = None,
) -> PublishOutcome:
    """Take a story down everywhere (or cancel its schedule); a second unpublish changes nothing."""
    reason = clean_text(reason or "").strip()
    if not reason:
        raise Unprocessable("reason: say why the story is taken down")
    story = get_story(session, story_id, lock=True)
    _check_version(story, expected_version)
    if story.status == "scheduled":
        _unschedule(session, story, actor=actor, note=reason)
        return PublishOutcome(story=story, event=None)
    if story.status != "published":
        log.info("story %s is %s already; unpublish by %s changes nothing", story.id, story.status, actor)
        return PublishOutcome(story=story, event=None)
    previous = membership(story)
    story.status = "unpublished"
    story.unpublished_at = now or utcnow()
    story.publish_at = None
    pending = {k: v for k, v in (story.pending or {}).items() if k != _PUBLISH_KEY}
    story.pending = pending or None
    story.revision += 1
    session.flush()
    add_revision(session, story, "unpublished", actor=actor, note=reason)
    announce_story(session, story, "story.killed", previous=previous)
    log.info("story %s r%s unpublished by %s: %s", story.id, story.revision, actor, reason, extra=CONSOLE)
    return PublishOutcome(story=story, event="story.killed")


def edit_story(
    session: Session,
    *,
    story_id: int,
    changes: dict[str, Any],
    expected_version: int | None,
    actor: str | None,
) -> Story:
    """A new revision; a published story shows it only after the next publish."""
    if not changes:
        raise Unprocessable(f"nothing to change; editable: {', '.join(EDITABLE_FIELDS)}")
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise Unprocessable(
            f"cannot edit {', '.join(sorted(unknown))}; editable: {', '.join(EDITABLE_FIELDS)}"
        )
    clean = _clean_changes(changes)
    story = get_story(session, story_id, lock=True)
    _check_version(story, expected_version)
    story.pending = jsonable({**(story.pending or {}), **clean})
    if story.status not in ("published", "scheduled"):
        # Nobody reads it now: the edit applies at once.
        _apply_pending(story)
    story.revision += 1
    session.flush()
    add_revision(session, story, "edited", actor=actor, note=", ".join(sorted(clean)))
    log.info("story %s r%s edited by %s: %s", story.id, story.revision, actor, ", ".join(sorted(clean)))
    return story


def _clean_changes(changes: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "tags":
            if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
                raise Unprocessable("tags: a list of strings")
            clean["tags"] = [clean_headline(tag) for tag in value if clean_headline(tag)]
            continue
        if value is not None and not isinstance(value, str):
            raise Unprocessable(f"{name}: a string")
        if name == "headline":
            if not value or not clean_headline(value):
                raise Unprocessable("headline: must not be empty")
            clean[name] = clean_headline(value)
        elif name == "body_html":
            try:
                body = sanitize_html(value or "")
            except MarkupTooDeep as error:
                raise Unprocessable(f"body_html: {error}") from None
            if not html_to_text(body).strip():
                raise Unprocessable("body_html: must not be empty")
            clean[name] = body
            clean["body_text"] = html_to_text(body)
        elif name == "author_name":
            author = clean_headline(value) if value else ""
            clean[name] = author or None
            clean["author_slug"] = slugify(author) if author else None
        elif name == "section":
            # Sections are slugs, as ingest stores them: they name feeds and partner filters.
            clean[name] = slugify(value) if value and clean_headline(value) else None
        else:
            clean[name] = (clean_text(value).strip() or None) if value else None
    return clean


def list_stories(
    session: Session,
    *,
    status: str | None = None,
    section: str | None = None,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Story]:
    """The editor's list, newest first, filtered by status, section and text."""
    query = select(Story).order_by(Story.id.desc()).limit(max(1, min(limit, 200))).offset(max(0, offset))
    if status:
        if status not in STATUSES:
            raise Unprocessable(f"status: one of {', '.join(STATUSES)}")
        query = query.where(Story.status == status)
    if section:
        query = query.where(Story.section == slugify(section))
    if q and q.strip():
        pattern = f"%{q.strip()}%"
        query = query.where(
            or_(
                Story.headline.ilike(pattern),
                Story.lede.ilike(pattern),
                Story.body_text.ilike(pattern),
                Story.author_name.ilike(pattern),
                Story.guid.ilike(pattern),
            )
        )
    return list(session.scalars(query))
