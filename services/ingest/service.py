"""Ingest: keep every post untouched, then turn its items into stories."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.ingest.normalize import slugify
from services.ingest.parsers import FORMATS, format_for_content_type, parse
from services.ingest.parsers.base import ItemError, MalformedPost, ParsedItem
from shared.auth import create_token
from shared.errors import Conflict, NotFound, SkipEvent, Unprocessable
from shared.events import emit
from shared.models import Receipt, ReceiptItem, Source, Story, utcnow
from shared.stories import CONTENT_FIELDS, add_revision, jsonable, set_labels, set_tags

log = logging.getLogger(__name__)


@dataclass
class PostResult:
    """What the API answers for a post."""

    receipt: Receipt
    status: int
    items: int = 0
    error: str | None = None
    detail: str | None = None

    @property
    def receipt_id(self) -> int:
        return self.receipt.id


def add_source(
    session: Session,
    *,
    name: str,
    format: str = "ninjs",
    timezone: str = "UTC",
    auto_publish: bool = False,
    poll_url: str | None = None,
    poll_every: int | None = None,
) -> tuple[Source, str]:
    """Create a source and its wire token (returned once)."""
    if format not in FORMATS:
        raise Unprocessable(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise Unprocessable(f"unknown timezone {timezone!r}") from error
    if poll_url and not poll_url.startswith(("http://", "https://")):
        raise Unprocessable("a poll URL must be http(s)")
    if session.scalar(select(Source.id).where(Source.name == name)) is not None:
        raise Conflict(f"source {name!r} exists")
    source = Source(
        name=name,
        format=format,
        timezone=timezone,
        auto_publish=auto_publish,
        poll_url=poll_url,
        poll_every=poll_every if poll_url else None,
        next_poll_at=utcnow() if poll_url else None,
    )
    session.add(source)
    session.flush()
    token = create_token(session, role="wire", name=f"source:{name}", source_id=source.id)
    return source, token


def accept_post(session: Session, *, source: Source, content_type: str | None, body: bytes) -> PostResult:
    """Store a post's raw bytes as a receipt, check it, and queue it for ingest."""
    fmt = format_for_content_type(content_type, source.format)
    receipt = Receipt(source_id=source.id, content_type=content_type, format=fmt, body=body, size=len(body))
    session.add(receipt)
    if fmt is None:
        return _reject(session, receipt, 415, "unsupported_media_type",
                       f"unknown Content-Type {content_type!r}")  # fmt: skip
    try:
        parsed = parse(fmt, body, default_tz=ZoneInfo(source.timezone))
    except MalformedPost as error:
        return _reject(session, receipt, 400, "malformed", str(error))
    good = [item for item in parsed if isinstance(item, ParsedItem)]
    receipt.item_count = len(parsed)
    if not good:
        reasons = "; ".join(_describe(item) for item in parsed if isinstance(item, ItemError))
        return _reject(session, receipt, 422, "unprocessable", reasons or "the post has no items")
    session.flush()
    emit(session, "ingest.process_receipt", receipt_id=receipt.id)
    log.info("receipt %s from %s: %d items queued", receipt.id, source.name, len(parsed))
    return PostResult(receipt=receipt, status=202, items=len(parsed))


def _describe(error: ItemError) -> str:
    where = f"item {error.position}" + (f" ({error.guid})" if error.guid else "")
    field = f" [{error.field}]" if error.field else ""
    return f"{where}{field}: {error.reason}"


def _reject(session: Session, receipt: Receipt, status: int, code: str, detail: str) -> PostResult:
    receipt.status = "rejected"
    receipt.error = {"error": code, "detail": detail}
    receipt.processed_at = utcnow()
    session.flush()
    log.info("receipt %s rejected (%s): %s", receipt.id, status, detail)
    return PostResult(receipt=receipt, status=status, error=code, detail=detail)


def retry_receipt(session: Session, receipt_id: int) -> Receipt:
    """Queue a stored post to be processed again (after a fix), whatever became of it."""
    receipt = session.get(Receipt, receipt_id)
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} not found")
    source = session.get(Source, receipt.source_id)
    assert source is not None
    receipt.format = format_for_content_type(receipt.content_type, source.format)
    receipt.status = "pending"
    receipt.error = None
    session.flush()
    emit(session, "ingest.process_receipt", receipt_id=receipt.id)
    return receipt


def process_receipt(session: Session, receipt_id: int) -> list[ReceiptItem]:
    """Turn a pending receipt's items into stories; idempotent (a done receipt is skipped)."""
    receipt = session.scalars(select(Receipt).where(Receipt.id == receipt_id).with_for_update()).first()
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} not found")
    if receipt.status != "pending":
        raise SkipEvent(f"receipt {receipt_id} is {receipt.status}")
    source = session.get(Source, receipt.source_id)
    assert source is not None
    receipt.attempts += 1
    session.execute(delete(ReceiptItem).where(ReceiptItem.receipt_id == receipt.id))
    if receipt.format is None:
        _reject(session, receipt, 415, "unsupported_media_type", "unknown Content-Type")
        return []
    try:
        parsed = parse(receipt.format, receipt.body, default_tz=ZoneInfo(source.timezone))
    except MalformedPost as error:
        _reject(session, receipt, 400, "malformed", str(error))
        return []
    outcomes = []
    for position, item in enumerate(parsed):
        if isinstance(item, ItemError):
            row = ReceiptItem(receipt_id=receipt.id, position=position, guid=item.guid,
                              outcome="rejected", error=_describe(item))  # fmt: skip
        else:
            outcome, story_id = store_item(session, source=source, item=item)
            row = ReceiptItem(receipt_id=receipt.id, position=position, guid=item.guid,
                              story_id=story_id, outcome=outcome)  # fmt: skip
        session.add(row)
        outcomes.append(row)
    receipt.item_count = len(parsed)
    receipt.status = "done" if any(r.outcome != "rejected" for r in outcomes) else "rejected"
    if receipt.status == "rejected":
        receipt.error = {"error": "unprocessable", "detail": "; ".join(r.error or "" for r in outcomes)}
    receipt.processed_at = utcnow()
    session.flush()
    log.info("receipt %s: %s", receipt.id, ", ".join(f"{r.guid}={r.outcome}" for r in outcomes))
    return outcomes


def content_of(item: ParsedItem) -> dict[str, Any]:
    """The story columns an item sets, with the author's slug derived."""
    content = {name: getattr(item, name) for name in CONTENT_FIELDS if name != "author_slug"}
    content["author_slug"] = slugify(item.author_name) if item.author_name else None
    # Sections are kept as slugs: they name feeds and filters.
    content["section"] = slugify(item.section) if item.section else None
    content["picture"] = item.picture.as_dict() if item.picture else None
    return content


def content_hash(item: ParsedItem) -> str:
    """A stable hash of everything the wire said about the story."""

    def default(value: object) -> str:
        return value.isoformat() if isinstance(value, datetime) else str(value)

    document = {**content_of(item), "tags": item.tags, "labels": sorted(item.labels),
                "pubstatus": item.pubstatus}  # fmt: skip
    raw = json.dumps(document, sort_keys=True, default=default, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def store_item(session: Session, *, source: Source, item: ParsedItem) -> tuple[str, int | None]:
    """Create or update the story for (source, guid); only a newer version wins, decided in SQL."""
    digest = content_hash(item)
    content = content_of(item)
    version = item.version if item.version is not None else -1
    status = "unpublished" if item.pubstatus == "canceled" else "ingested"
    slug = _unique_slug(session, source, item)
    created = session.execute(
        _insert(session)(Story)
        .values(source_id=source.id, guid=item.guid, slug=slug, status=status, revision=1,
                wire_version=version, wire_version_created=item.version_created,
                content_hash=digest, created_at=utcnow(), modified_at=utcnow(), **content)
        .on_conflict_do_nothing(index_elements=["source_id", "guid"])
        .returning(Story.id)
    ).scalar()  # fmt: skip
    if created is not None:
        story = session.get_one(Story, created)
        _set_tags_and_labels(story, item)
        add_revision(session, story, "ingested", actor=f"source:{source.name}")
        _after_ingest(session, source, story, item, new=True)
        return "created", story.id

    # Newer = a higher version, or the same version created later, or (with no
    # ordering at all) different content. The comparison happens in the UPDATE,
    # so two workers racing on one guid cannot both win.
    conditions: list[ColumnElement[bool]] = [Story.wire_version < version]
    if item.version_created is not None:
        conditions.append(
            (Story.wire_version == version)
            & (Story.wire_version_created.is_(None) | (Story.wire_version_created < item.version_created))
        )
    elif item.version is None:
        conditions.append((Story.wire_version == -1) & Story.wire_version_created.is_(None))
    newer = or_(*conditions)
    updated = session.execute(
        update(Story)
        .where(Story.source_id == source.id, Story.guid == item.guid,
               Story.content_hash != digest, newer)
        .values(wire_version=version, wire_version_created=item.version_created,
                content_hash=digest, revision=Story.revision + 1, modified_at=utcnow())
        .returning(Story.id)
        .execution_options(synchronize_session=False)
    ).scalar()  # fmt: skip
    if updated is None:
        row = session.execute(
            select(Story.id, Story.content_hash).where(Story.source_id == source.id, Story.guid == item.guid)
        ).one()
        return ("unchanged" if row.content_hash == digest else "stale"), row.id

    story = session.get_one(Story, updated, populate_existing=True)
    if story.status in ("published", "scheduled") and item.pubstatus != "canceled":
        # Readers keep seeing the published text until the next publish.
        story.pending = jsonable({**content, "tags": item.tags, "labels": item.labels})
    else:
        for name, value in content.items():
            setattr(story, name, value)
        _set_tags_and_labels(story, item)
    add_revision(session, story, "ingested", actor=f"source:{source.name}")
    _after_ingest(session, source, story, item, new=False)
    return "updated", story.id


def _after_ingest(session: Session, source: Source, story: Story, item: ParsedItem, *, new: bool) -> None:
    if item.pubstatus == "canceled":
        if not new and story.status in ("published", "scheduled"):
            emit(session, "publish.unpublish_story", story_id=story.id,
                 reason="canceled by the wire", actor=f"source:{source.name}")  # fmt: skip
        return
    if item.pubstatus == "usable" and source.auto_publish:
        # The publish task honours the item's embargo by scheduling it.
        emit(session, "publish.publish_story", story_id=story.id,
             actor=f"source:{source.name}", expected_version=story.revision)  # fmt: skip


def _set_tags_and_labels(story: Story, item: ParsedItem) -> None:
    set_tags(story, item.tags)
    # Editors' labels stay; the wire decides only "opinion".
    labels = {row.label for row in story.labels if row.label != "opinion"} | set(item.labels)
    set_labels(story, labels)


def _unique_slug(session: Session, source: Source, item: ParsedItem) -> str:
    base = slugify(item.headline)[:80].strip("-") or "story"
    taken = session.scalar(select(Story.id).where(Story.slug == base))
    if taken is None:
        return base
    # Another story has this headline's slug: a short, stable suffix from the identity.
    suffix = hashlib.sha256(f"{source.id}:{item.guid}".encode()).hexdigest()[:8]
    return f"{base}-{suffix}"
