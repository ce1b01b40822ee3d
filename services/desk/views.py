"""What the desk shows: the incoming list, a story with its history, diffs, local times."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from shared.models import (
    Delivery,
    Partner,
    Receipt,
    ReceiptItem,
    Revision,
    Source,
    Story,
    StoryLabel,
    StoryTag,
)
from shared.stories import CONTENT_FIELDS
from shared.text import slugify
from shared.timefmt import label_display, local, sorted_labels

INCOMING_SIZE = 100
# Revisions read per look of a live stream.
BATCH = 500
RAW_LIMIT = 20_000
# How the desk names a story's state; "embargoed" is a draft or schedule held by a wire embargo.
DESK_STATUSES = ("draft", "scheduled", "embargoed", "published", "killed")
_STATUS_OF = {
    "ingested": "draft",
    "scheduled": "scheduled",
    "published": "published",
    "unpublished": "killed",
}
_STORED_STATUS = {desk: stored for stored, desk in _STATUS_OF.items()}
_PUBLISH_KEY = "_publish"
DIFF_FIELDS = (("headline", "Headline"), ("lede", "Lede"), ("body_text", "Body"))


def desk_status(story: Story, now: datetime) -> str:
    """The story's state in the desk's words."""
    if story.status in ("ingested", "scheduled") and story.embargo_until and story.embargo_until > now:
        return "embargoed"
    return _STATUS_OF.get(story.status, story.status)


def pending_changes(story: Story) -> dict[str, Any]:
    """Edits (from an editor or a newer wire version) waiting for the next publish."""
    return {k: v for k, v in (story.pending or {}).items() if k != _PUBLISH_KEY}


def effective(story: Story, name: str) -> Any:
    """A field as the next publish will show it."""
    pending = pending_changes(story)
    if name == "tags":
        return pending.get("tags", story.tag_names)
    return pending[name] if name in pending else getattr(story, name)


def when_text(dt: datetime | None, tz: tzinfo, now: datetime) -> str:
    """``14:05`` today, ``3 Dec 14:05`` this year, ``3 Dec 2025 14:05`` before."""
    if dt is None:
        return ""
    wall, today = local(dt, tz), local(now, tz)
    if wall.date() == today.date():
        return wall.strftime("%H:%M")
    if wall.year == today.year:
        return f"{wall.day} {wall.strftime('%b %H:%M')}"
    return f"{wall.day} {wall.strftime('%b %Y %H:%M')}"


def full_time(dt: datetime | None, tz: tzinfo) -> str:
    """``Sun 28 Mar 2027, 12:00 EEST`` in the newsroom's zone."""
    if dt is None:
        return ""
    wall = local(dt, tz)
    return f"{wall.strftime('%a')} {wall.day} {wall.strftime('%b %Y, %H:%M %Z')}"


def iso_local(dt: datetime | None, tz: tzinfo) -> str:
    return local(dt, tz).isoformat() if dt else ""


class LocalTimeError(ValueError):
    """A local time the newsroom's clock never shows (or a malformed one)."""


def parse_local(value: str, tz: tzinfo) -> datetime:
    """A ``datetime-local`` value (``2027-03-28T12:00``) read as wall-clock time in ``tz``.

    A time skipped when the clocks go forward does not exist and is refused; one that
    happens twice when they go back is the first of the two (the earlier instant).
    """
    try:
        naive = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise LocalTimeError(f"{value!r} is not a date and time") from error
    if naive.tzinfo is not None:
        raise LocalTimeError("give the local time without an offset")
    aware = naive.replace(tzinfo=tz, fold=0)
    round_trip = aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if round_trip != naive:
        raise LocalTimeError(
            f"{naive:%d %b %Y %H:%M} does not exist in {tz}: the clocks go forward then "
            f"(the hour is skipped); pick a time outside the gap"
        )
    return aware.astimezone(UTC)


@dataclass(frozen=True)
class Filters:
    """The incoming list's filters, as the query string gives them."""

    source: str = ""
    section: str = ""
    status: str = ""
    q: str = ""
    story: int | None = None

    @property
    def query(self) -> dict[str, str]:
        return {k: str(v) for k, v in vars(self).items() if v}


@dataclass(frozen=True)
class Row:
    """One story in the incoming list."""

    id: int
    headline: str
    source: str
    section: str | None
    when: str
    iso: str
    status: str
    labels: list[str]
    new_version: bool
    version: int


def _filtered(query: Select[Story, str], filters: Filters, now: datetime) -> Select[Story, str]:
    if filters.story is not None:
        query = query.where(Story.id == filters.story)
    if filters.source:
        query = query.where(Source.name == filters.source)
    if filters.section:
        query = query.where(Story.section == slugify(filters.section))
    if filters.status == "embargoed":
        query = query.where(Story.status.in_(("ingested", "scheduled")), Story.embargo_until > now)
    elif filters.status in _STORED_STATUS:
        query = query.where(Story.status == _STORED_STATUS[filters.status])
        if filters.status in ("draft", "scheduled"):
            query = query.where((Story.embargo_until.is_(None)) | (Story.embargo_until <= now))
    if filters.q.strip():
        query = query.where(Story.headline.ilike(f"%{filters.q.strip()}%"))
    return query


def row(story: Story, source: str, tz: tzinfo, now: datetime) -> Row:
    """A story as the incoming list shows it."""
    moment = story.modified_at or story.created_at
    return Row(
        id=story.id,
        headline=effective(story, "headline"),
        source=source,
        section=story.section,
        when=when_text(moment, tz, now),
        iso=iso_local(moment, tz),
        status=desk_status(story, now),
        labels=[label_display(name) for name in sorted_labels(story.label_names)],
        new_version=story.status == "published" and bool(pending_changes(story)),
        version=story.revision,
    )


def incoming(session: Session, filters: Filters, tz: tzinfo, now: datetime) -> list[Row]:
    """The stories that changed last (a new story or a new version), newest first."""
    query = (
        select(Story, Source.name)
        .join(Source, Source.id == Story.source_id)
        .order_by(Story.modified_at.desc(), Story.id.desc())
        .limit(INCOMING_SIZE)
    )
    return [row(story, name, tz, now) for story, name in session.execute(_filtered(query, filters, now))]


def last_revision_id(session: Session) -> int:
    """The newest revision's id: where a live list starts listening."""
    return session.scalar(select(func.max(Revision.id))) or 0


@dataclass
class Changes:
    """Stories changed after a revision id: their rows (None: no longer in the list) and the last id."""

    rows: list[tuple[int, int, Row | None]] = field(default_factory=list)
    last: int = 0
    more: bool = False  # a full batch: look again at once


def changes_since(session: Session, after: int, filters: Filters, tz: tzinfo, now: datetime) -> Changes:
    """What the incoming list must show for every revision written after ``after``."""
    revisions = session.execute(
        select(Revision.id, Revision.story_id).where(Revision.id > after).order_by(Revision.id).limit(BATCH)
    ).all()
    changes = Changes(last=after, more=len(revisions) == BATCH)
    if not revisions:
        return changes
    latest: dict[int, int] = {}
    for revision_id, story_id in revisions:
        latest[story_id] = revision_id
    changes.last = revisions[-1][0]
    query = select(Story, Source.name).join(Source, Source.id == Story.source_id)
    query = _filtered(query.where(Story.id.in_(latest)), filters, now)
    shown = {story.id: row(story, name, tz, now) for story, name in session.execute(query)}
    for story_id, revision_id in sorted(latest.items(), key=lambda item: item[1]):
        changes.rows.append((revision_id, story_id, shown.get(story_id)))
    return changes


def filter_choices(session: Session) -> dict[str, list[str]]:
    """The sources and sections to filter by."""
    sections = session.scalars(
        select(Story.section)
        .where(Story.section.is_not(None))
        .group_by(Story.section)
        .order_by(Story.section)
    )
    return {
        "sources": list(session.scalars(select(Source.name).order_by(Source.name))),
        "sections": [section for section in sections if section],
        "statuses": list(DESK_STATUSES),
    }


# --- a story -------------------------------------------------------------------------------


def content_of(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A revision's text as its next publish would show it (waiting edits applied)."""
    pending = {k: v for k, v in (snapshot.get("pending") or {}).items() if k != _PUBLISH_KEY}
    return {**snapshot, **pending}


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s+|[^\s]+", text)


def word_diff(old: str | None, new: str | None) -> Markup:
    """``new`` against ``old`` word by word: removed words in <del>, added ones in <ins>."""
    before, after = _tokens(old or ""), _tokens(new or "")
    parts: list[str] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            parts.append(str(escape("".join(before[a1:a2]))))
            continue
        if op in ("delete", "replace"):
            parts.append(f"<del>{escape(''.join(before[a1:a2]))}</del>")
        if op in ("insert", "replace"):
            parts.append(f"<ins>{escape(''.join(after[b1:b2]))}</ins>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped


@dataclass(frozen=True)
class FieldDiff:
    name: str
    label: str
    changed: bool
    html: Markup


def diff_snapshots(old: dict[str, Any], new: dict[str, Any]) -> list[FieldDiff]:
    """Headline, lede and body of two revisions compared word by word."""
    before, after = content_of(old), content_of(new)
    return [
        FieldDiff(
            name,
            label,
            (before.get(name) or "") != (after.get(name) or ""),
            word_diff(before.get(name), after.get(name)),
        )
        for name, label in DIFF_FIELDS
    ]


def revisions(session: Session, story_id: int) -> list[Revision]:
    return list(
        session.scalars(select(Revision).where(Revision.story_id == story_id).order_by(Revision.number))
    )


def raw_post(session: Session, story_id: int) -> dict[str, Any] | None:
    """The newest wire post that carried this story, decoded for display and cut to a readable size."""
    receipt = session.scalars(
        select(Receipt)
        .join(ReceiptItem, ReceiptItem.receipt_id == Receipt.id)
        .where(ReceiptItem.story_id == story_id)
        .order_by(Receipt.id.desc())
        .limit(1)
    ).first()
    if receipt is None:
        return None
    text = receipt.body[:RAW_LIMIT].decode("utf-8", errors="replace")
    return {
        "id": receipt.id,
        "content_type": receipt.content_type,
        "size": receipt.size,
        "created_at": receipt.created_at,
        "text": text,
        "truncated": len(receipt.body) > RAW_LIMIT,
    }


def deliveries(
    session: Session, *, story_id: int | None = None, status: str | None = None, limit: int = 200
) -> list[tuple[Delivery, str]]:
    """Deliveries with their partner's name, newest first."""
    query = select(Delivery, Partner.name).join(Partner, Partner.id == Delivery.partner_id)
    if story_id is not None:
        query = query.where(Delivery.story_id == story_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    return [(d, n) for d, n in session.execute(query.order_by(Delivery.created_at.desc()).limit(limit))]


def preview_story(story: Story) -> Story:
    """A detached copy of the story as its next publish will show it, for the reader page's renderer."""
    pending = pending_changes(story)
    copy = Story(
        **{
            name: getattr(story, name)
            for name in (
                "id",
                "source_id",
                "guid",
                "slug",
                "status",
                "revision",
                "wire_version",
                "content_hash",
                *CONTENT_FIELDS,
                "correction_note",
                "published_at",
                "updated_at",
                "publish_at",
            )
        }
    )
    for name, value in pending.items():
        if name in CONTENT_FIELDS and name not in ("first_created", "version_created", "embargo_until"):
            setattr(copy, name, value)
    names = pending.get("tags", story.tag_names)
    copy.tags = [StoryTag(slug=slugify(name), name=name, position=i) for i, name in enumerate(names)]
    copy.labels = [StoryLabel(label=label) for label in story.label_names]
    return copy


def default_schedule_value(now: datetime, tz: tzinfo) -> str:
    """The schedule field's starting value: the next full hour, local."""
    wall = local(now + timedelta(hours=1), tz).replace(minute=0, second=0, microsecond=0)
    return wall.strftime("%Y-%m-%dT%H:%M")
