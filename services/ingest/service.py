"""Ingest: keep every post untouched, then turn its items into stories."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from sqlalchemy import ColumnElement, Table, bindparam, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from services.ingest.normalize import slugify
from services.ingest.parsers import FORMATS, count_items, format_for_content_type, parse
from services.ingest.parsers.base import ItemError, MalformedPost, ParsedItem
from shared import egress, tasknames
from shared.auth import create_token, revoke_source_tokens
from shared.config import get_settings
from shared.errors import Conflict, NotFound, SkipEvent, TransientError, Unprocessable
from shared.logs import CONSOLE
from shared.models import Receipt, ReceiptItem, Source, Story, utcnow
from shared.outbox import emit, savepoint
from shared.stories import CONTENT_FIELDS, add_revision, jsonable, note_written, set_labels, set_tags

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
    if poll_url:
        egress.check_url(poll_url, what="poll URL")
    if poll_url and (poll_every is None or poll_every < 1):
        raise Unprocessable("a polled source needs --every SECONDS (at least 1)")
    existing = session.scalars(select(Source).where(Source.name == name)).first()
    if existing is not None:
        raise Conflict(
            f"source {name!r} exists" + (" (removed; its name stays taken)" if existing.removed_at else "")
        )
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


@dataclass(frozen=True, slots=True)
class PostCheck:
    """What checking a post found: its format, and its status (202, or why it is refused)."""

    format: str | None
    status: int
    items: int | None = None
    error: str | None = None
    detail: str | None = None


# Posts up to this size are parsed item by item before the answer (a 422 says which item
# lacks what); larger ones only for their form, nesting and item count, so that the answer
# stays well under a second whatever they hold, and the receipt tells about their items.
CHECKED_POST_BYTES = 128 * 1024


def check_post(*, source: Source, content_type: str | None, body: bytes) -> PostCheck:
    """Parse a post to answer for it; needs no transaction, so none waits on the parsing."""
    fmt = format_for_content_type(content_type, source.format)
    if fmt is None:
        return PostCheck(
            None, 415, error="unsupported_media_type", detail=f"unknown Content-Type {content_type!r}"
        )
    try:
        if len(body) > CHECKED_POST_BYTES:
            return PostCheck(fmt, 202, count_items(fmt, body))
        parsed = parse(fmt, body, default_tz=ZoneInfo(source.timezone))
    except MalformedPost as error:  # or over a limit of the whole post (PostOverLimit, 422)
        return PostCheck(fmt, error.status, error=error.code, detail=str(error))
    if not any(isinstance(item, ParsedItem) for item in parsed):
        reasons = "; ".join(_describe(item) for item in parsed if isinstance(item, ItemError))
        return PostCheck(fmt, 422, len(parsed), "unprocessable", reasons or "the post has no items")
    return PostCheck(fmt, 202, len(parsed))


def accept_post(
    session: Session, *, source: Source, content_type: str | None, body: bytes, check: PostCheck | None = None
) -> PostResult:
    """Store a post's raw bytes as a receipt, with its check (``check_post``), and queue it for ingest."""
    if check is None:
        check = check_post(source=source, content_type=content_type, body=body)
    receipt = Receipt(
        source_id=source.id,
        content_type=content_type,
        format=check.format,
        body=body,
        size=len(body),
        item_count=check.items or 0,
        status="pending",
        attempts=0,
        created_at=utcnow(),
    )
    if check.status != 202:
        session.add(receipt)
        return _reject(session, receipt, check.status, check.error or "", check.detail or "")
    # Every post takes this path: one Core INSERT, without the unit of work's bookkeeping.
    # The receipt is not in the session; it is what was written, for the answer.
    values = {column: getattr(receipt, column) for column in _NEW_RECEIPT_COLUMNS}
    receipt.id = session.connection().execute(_INSERT_RECEIPT, values).scalar_one()
    # Batched: under load a worker takes many posts in one run.
    emit(session, tasknames.PROCESS_RECEIPT, {"receipt_id": receipt.id}, batch=True)
    log.info("receipt %s from %s: %d items queued", receipt.id, source.name, check.items)
    return PostResult(receipt=receipt, status=202, items=check.items or 0)


RECEIPTS = cast(Table, Receipt.__table__)
_NEW_RECEIPT_COLUMNS = (
    "source_id",
    "content_type",
    "format",
    "body",
    "size",
    "item_count",
    "status",
    "attempts",
    "created_at",
)
_INSERT_RECEIPT = RECEIPTS.insert().returning(RECEIPTS.c.id)
RECEIPT_ITEMS = cast(Table, ReceiptItem.__table__)
_ITEM_COLUMNS = ("receipt_id", "position", "guid", "story_id", "outcome", "error")


def _describe(error: ItemError) -> str:
    where = f"item {error.position}" + (f" ({error.guid})" if error.guid else "")
    field = f" [{error.field}]" if error.field else ""
    return f"{where}{field}: {error.reason}"


def _reject(session: Session, receipt: Receipt, status: int, code: str, detail: str) -> PostResult:
    receipt.status = "rejected"
    receipt.error = {"error": code, "detail": detail}
    receipt.processed_at = utcnow()
    session.flush()
    log.info("receipt %s rejected (%s): %s", receipt.id, status, detail, extra=CONSOLE)
    return PostResult(receipt=receipt, status=status, error=code, detail=detail)


def retry_receipt(session: Session, receipt_id: int) -> Receipt:
    """Queue a stored post to be processed again (after a fix), whatever became of it."""
    receipt = session.get(Receipt, receipt_id)
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} not found")
    if (receipt.error or {}).get("error") == "too_large":
        raise Conflict(
            f"receipt {receipt_id} kept only the first {len(receipt.body)} bytes of an oversized post"
        )
    if receipt.body_pruned_at is not None:
        raise Conflict(
            f"receipt {receipt_id}: its raw post was pruned on {receipt.body_pruned_at:%Y-%m-%d} "
            "(NEWSROOM_RETAIN_RAW_DAYS)"
        )
    source = session.get(Source, receipt.source_id)
    assert source is not None
    receipt.format = format_for_content_type(receipt.content_type, source.format)
    receipt.status = "pending"
    receipt.error = None
    session.flush()
    emit(session, tasknames.PROCESS_RECEIPT, {"receipt_id": receipt.id})
    log.info("receipt %s queued again", receipt.id)
    return receipt


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    """A pending receipt's items, parsed before the transaction that stores them."""

    receipt_id: int
    format: str | None
    attempts: int
    items: list[ParsedItem | ItemError] | MalformedPost | None


def parse_receipt(session: Session, receipt_id: int) -> ParsedReceipt:
    """Read a pending receipt and parse it (a reading session is enough: nothing waits on it)."""
    receipt = session.get(Receipt, receipt_id)
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} not found")
    if receipt.status != "pending":
        raise SkipEvent(f"receipt {receipt_id} is {receipt.status}")
    source = session.get_one(Source, receipt.source_id)
    return ParsedReceipt(receipt.id, receipt.format, receipt.attempts, _parse_receipt(receipt, source))


def _parse_receipt(receipt: Receipt, source: Source) -> list[ParsedItem | ItemError] | MalformedPost | None:
    if receipt.format is None:
        return None
    try:
        return list(parse(receipt.format, receipt.body, default_tz=ZoneInfo(source.timezone)))
    except MalformedPost as error:
        return error


def process_receipt(
    session: Session, receipt_id: int, *, parsed: ParsedReceipt | None = None
) -> list[ReceiptItem]:
    """Turn a pending receipt's items into stories; idempotent (a done receipt is skipped).

    ``parsed`` (from ``parse_receipt``) is used if the receipt has not changed since.
    """
    receipt = session.scalars(select(Receipt).where(Receipt.id == receipt_id).with_for_update()).first()
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} not found")
    if receipt.status != "pending":
        raise SkipEvent(f"receipt {receipt_id} is {receipt.status}")
    source = session.get(Source, receipt.source_id)
    assert source is not None
    if receipt.attempts:  # processed before (and sent back by a retry): its old rows go
        session.execute(delete(ReceiptItem).where(ReceiptItem.receipt_id == receipt.id))
    fresh = parsed is not None and (parsed.format, parsed.attempts) == (receipt.format, receipt.attempts)
    items = parsed.items if parsed is not None and fresh else _parse_receipt(receipt, source)
    outcomes = _process(session, receipt, source, items)
    # Counted last, so that the items' savepoints do not each flush the receipt first.
    receipt.attempts += 1
    session.flush()
    log.info(
        "receipt %s: %s", receipt.id, ", ".join(f"{r.guid}={r.outcome}" for r in outcomes) or receipt.error
    )
    return outcomes


def _process(
    session: Session,
    receipt: Receipt,
    source: Source,
    parsed: list[ParsedItem | ItemError] | MalformedPost | None,
) -> list[ReceiptItem]:
    if parsed is None:
        _reject(session, receipt, 415, "unsupported_media_type", "unknown Content-Type")
        return []
    if isinstance(parsed, MalformedPost):
        _reject(session, receipt, parsed.status, parsed.code, str(parsed))
        return []
    outcomes = []
    for position, item in enumerate(parsed):
        if isinstance(item, ItemError):
            row = ReceiptItem(
                receipt_id=receipt.id,
                position=position,
                guid=item.guid,
                outcome="rejected",
                error=_describe(item),
            )
        else:
            row = _store_in_savepoint(session, receipt, source, position, item)
        outcomes.append(row)
    if outcomes:
        # One Core INSERT for them all; the rows are returned as written, not kept in the session.
        values = [{column: getattr(row, column) for column in _ITEM_COLUMNS} for row in outcomes]
        session.connection().execute(RECEIPT_ITEMS.insert(), values)
    receipt.item_count = len(parsed)
    receipt.status = "done" if any(r.outcome != "rejected" for r in outcomes) else "rejected"
    if receipt.status == "rejected":
        receipt.error = {"error": "unprocessable", "detail": "; ".join(r.error or "" for r in outcomes)}
    receipt.processed_at = utcnow()
    return outcomes


def _store_in_savepoint(
    session: Session, receipt: Receipt, source: Source, position: int, item: ParsedItem
) -> ReceiptItem:
    """Store one item; an item the database refuses is rejected alone, the others still go in."""
    try:
        with savepoint(session):
            outcome, story_id = store_item(session, source=source, item=item)
    except (OperationalError, TransientError):
        raise  # the database is unwell, not the item: the whole receipt is retried
    except Exception as error:
        log.exception("receipt %s item %d (%s) could not be stored", receipt.id, position, item.guid)
        return ReceiptItem(
            receipt_id=receipt.id,
            position=position,
            guid=item.guid,
            outcome="rejected",
            error=f"item {position} ({item.guid}): could not be stored: {type(error).__name__}: {error}"[
                :2000
            ],
        )
    return ReceiptItem(
        receipt_id=receipt.id, position=position, guid=item.guid, story_id=story_id, outcome=outcome
    )


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

    document = {
        **content_of(item),
        "tags": item.tags,
        "labels": sorted(item.labels),
        "pubstatus": item.pubstatus,
    }
    raw = json.dumps(document, sort_keys=True, default=default, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


# The statements of the hot path are built once, with bind parameters: building them per
# item (dozens of columns) cost more than running them.
STORIES = cast(Table, Story.__table__)


@functools.cache
def _insert_statement(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # No conflict target: a clash on the slug is not an error either, it means "try the
    # next slug" (two new stories with one headline may race for it).
    return insert(STORIES).on_conflict_do_nothing().returning(STORIES.c.id)


@functools.cache
def _update_statement(*, has_version: bool, has_time: bool, same_content: bool) -> Any:
    """UPDATE the story if the item is newer; the comparison is in SQL, so a racing worker cannot win too.

    Newer = a higher version, or the same version created later, or (with no ordering at
    all) different content. With ``same_content`` only the version is recorded.
    """
    c = STORIES.c
    newer: list[ColumnElement[bool]] = [c.wire_version < bindparam("new_version")]
    if has_time:
        newer.append(
            (c.wire_version == bindparam("new_version"))
            & (c.wire_version_created.is_(None) | (c.wire_version_created < bindparam("new_time")))
        )
    elif not has_version:
        newer.append((c.wire_version == -1) & c.wire_version_created.is_(None))
    content = c.content_hash == bindparam("digest") if same_content else c.content_hash != bindparam("digest")
    values: dict[str, Any] = {
        "wire_version": bindparam("new_version"),
        "wire_version_created": bindparam("new_time"),
    }
    if not same_content:
        values |= {
            "content_hash": bindparam("digest"),
            "revision": c.revision + 1,
            "modified_at": bindparam("now"),
        }
    return (
        update(STORIES)
        .where(c.source_id == bindparam("of_source"), c.guid == bindparam("of_guid"), content, or_(*newer))
        .values(values)
        .returning(c.id)
    )


def store_item(session: Session, *, source: Source, item: ParsedItem) -> tuple[str, int | None]:
    """Create or update the story for (source, guid); only a newer version wins, decided in SQL."""
    digest = content_hash(item)
    content = content_of(item)
    version = item.version if item.version is not None else -1
    story = _insert_story(session, source, item, content, digest, version)
    if story is not None:
        _set_tags_and_labels(story, item)
        add_revision(session, story, "ingested", actor=f"source:{source.name}")
        note_written(session, story)
        _after_ingest(session, source, story, item, new=True)
        log.info("story %s created from %s %s", story.id, source.name, item.guid)
        return "created", story.id

    params = {
        "of_source": source.id,
        "of_guid": item.guid,
        "digest": digest,
        "new_version": version,
        "new_time": item.version_created,
        "now": utcnow(),
    }
    shape = {"has_version": item.version is not None, "has_time": item.version_created is not None}
    updated = session.execute(_update_statement(**shape, same_content=False), params).scalar()
    if updated is None:
        # The same text under a newer version: nothing to show, but the version is
        # remembered, so that an older one arriving later is known to be stale.
        same = session.execute(_update_statement(**shape, same_content=True), params).scalar()
        if same is not None:
            return "unchanged", same
        row = session.execute(
            select(Story.id, Story.content_hash).where(Story.source_id == source.id, Story.guid == item.guid)
        ).one()
        return ("unchanged" if row.content_hash == digest else "stale"), row.id

    story = session.get_one(Story, updated, populate_existing=True)
    if item.pubstatus == "canceled" and story.status == "ingested":
        story.status = "unpublished"  # never published: killed here, nothing to take down
    if story.status in ("published", "scheduled") and item.pubstatus != "canceled":
        # Readers keep seeing the published text until the next publish.
        story.pending = jsonable({**content, "tags": item.tags, "labels": item.labels})
    else:
        for name, value in content.items():
            setattr(story, name, value)
        _set_tags_and_labels(story, item)
    add_revision(session, story, "ingested", actor=f"source:{source.name}")
    note_written(session, story)
    _after_ingest(session, source, story, item, new=False)
    log.info("story %s r%s updated from %s %s", story.id, story.revision, source.name, item.guid)
    return "updated", story.id


def _insert_story(
    session: Session, source: Source, item: ParsedItem, content: dict[str, Any], digest: str, version: int
) -> Story | None:
    """Insert the story if (source, guid) is new, with a slug no other story has; else None."""
    now = utcnow()
    status = "unpublished" if item.pubstatus == "canceled" else "ingested"
    values = content | {
        "source_id": source.id,
        "guid": item.guid,
        "status": status,
        "revision": 1,
        "wire_version": version,
        "wire_version_created": item.version_created,
        "content_hash": digest,
        "created_at": now,
        "modified_at": now,
    }
    statement = _insert_statement(session.get_bind().dialect.name)
    for slug in _slug_candidates(source, item):
        values["slug"] = slug
        created = session.execute(statement, values).scalar()
        if created is not None:
            # The row is exactly these values (NULL elsewhere) and has no tags or labels
            # yet: attach it to the session as it is, rather than reading it back.
            story = Story(**(dict.fromkeys(STORIES.columns.keys()) | values | {"id": created}))
            make_transient_to_detached(story)
            session.add(story)
            set_committed_value(story, "tags", [])
            set_committed_value(story, "labels", [])
            return story
        exists = session.scalar(select(Story.id).where(Story.source_id == source.id, Story.guid == item.guid))
        if exists is not None:
            return None
    raise Conflict(f"no free slug for {item.guid!r}")


def _slug_candidates(source: Source, item: ParsedItem) -> list[str]:
    base = slugify(item.headline)[:80].strip("-") or "story"
    # Another story has this headline's slug: a short, stable suffix from the identity.
    suffix = hashlib.sha256(f"{source.id}:{item.guid}".encode()).hexdigest()[:8]
    return [base, f"{base}-{suffix}", *(f"{base}-{suffix}-{n}" for n in range(2, 10))]


def _after_ingest(session: Session, source: Source, story: Story, item: ParsedItem, *, new: bool) -> None:
    if item.pubstatus == "canceled":
        if not new and story.status in ("published", "scheduled"):
            actor = f"source:{source.name}"
            canceled = {"story_id": story.id, "reason": "canceled by the wire", "actor": actor}
            emit(session, tasknames.UNPUBLISH_STORY, canceled)
        return
    if item.pubstatus == "usable" and source.auto_publish:
        # The publish task honours the item's embargo by scheduling it.
        # Batched: in one run with the other stories waiting.
        publish = {"story_id": story.id, "actor": f"source:{source.name}", "expected_version": story.revision}
        emit(session, tasknames.PUBLISH_STORY, publish, batch=True)


def _set_tags_and_labels(story: Story, item: ParsedItem) -> None:
    set_tags(story, item.tags)
    # Editors' labels stay; the wire decides only "opinion".
    labels = {row.label for row in story.labels if row.label != "opinion"} | set(item.labels)
    set_labels(story, labels)


# Sources ------------------------------------------------------------------------------


def source_view(source: Source) -> dict[str, Any]:
    """A source as `newsroom source list` and GET /v1/sources show it."""
    return {
        "id": source.id,
        "name": source.name,
        "format": source.format,
        "timezone": source.timezone,
        "auto_publish": source.auto_publish,
        "poll_url": source.poll_url,
        "poll_every": source.poll_every,
        "next_poll_at": source.next_poll_at.isoformat() if source.next_poll_at else None,
        "poll_failures": source.poll_failures,
        "last_error": source.last_error,
        "failing": source.poll_failures > 0,
        "enabled": source.enabled,
    }


def list_sources(session: Session, *, failing: bool = False) -> list[Source]:
    """Every source not removed, by name; only those whose polls keep failing with ``failing``."""
    query = select(Source).where(Source.removed_at.is_(None)).order_by(Source.name)
    if failing:
        query = query.where(Source.poll_failures > 0)
    return list(session.scalars(query))


def find_source(session: Session, name: str) -> Source:
    """A source by name that was not removed; NotFound otherwise."""
    source = session.scalars(select(Source).where(Source.name == name, Source.removed_at.is_(None))).first()
    if source is None:
        raise NotFound(f"source {name!r} not found")
    return source


def disable_source(session: Session, *, name: str) -> Source:
    """Refuse the source's posts (403) and stop polling it, until it is enabled again."""
    source = find_source(session, name)
    source.enabled = False
    source.next_poll_at = None
    log.info("source %s (%s) disabled", source.id, source.name)
    return source


def enable_source(session: Session, *, name: str) -> Source:
    """Take the source's posts again, and poll it from now on if it is polled."""
    source = find_source(session, name)
    source.enabled = True
    source.next_poll_at = utcnow() if source.poll_url else None
    log.info("source %s (%s) enabled", source.id, source.name)
    return source


def remove_source(session: Session, *, name: str) -> Source:
    """Disable a source for good, revoke its tokens and hide it.

    Its receipts and stories stay (a story is known by its source and guid, and published
    stories stay published); so does its name, so that history never points at another source.
    """
    source = disable_source(session, name=name)
    source.removed_at = utcnow()
    revoked = revoke_source_tokens(session, source_id=source.id)
    log.info("source %s (%s) removed; %d tokens revoked", source.id, source.name, revoked)
    return source


# Polling ------------------------------------------------------------------------------

POLL_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# The whole fetch, however slowly the server drips its bytes.
POLL_DEADLINE_SECONDS = 30.0
# While a poll runs, the source is not due: neither a second tick nor a second scheduler
# polls it again. A worker that dies mid-poll leaves the source due again after this.
POLL_LEASE = timedelta(seconds=POLL_DEADLINE_SECONDS + 30)
POLL_BACKOFF_CAP = timedelta(hours=1)
POLL_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/ninjs+json, "
    "application/vnd.iptc.g2.newsmessage+xml, application/xml;q=0.9, "
    "application/json;q=0.9, */*;q=0.1"
)
# Media types that name one format; anything vaguer is read in the source's own format.
_SPECIFIC_TYPES = frozenset(
    {
        "application/ninjs+json",
        "application/vnd.iptc.g2.newsitem+xml",
        "application/vnd.iptc.g2.newsmessage+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/vnd.newsroom.column+json",
    }
)


@dataclass(frozen=True)
class PollRequest:
    """A claimed poll: what to fetch, with the validators of the last fetch."""

    source_id: int
    name: str
    url: str
    every: int
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class PollResponse:
    """What the fetch brought back: a status and body, or the reason it failed."""

    status: int | None = None
    content_type: str | None = None
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None


def claim_poll(session: Session, *, source_id: int, now: datetime | None = None) -> PollRequest:
    """Take a due source for polling, in SQL, so a repeated tick or a second scheduler skips it."""
    now = now or utcnow()
    row = session.execute(
        update(Source)
        .where(
            Source.id == source_id,
            Source.poll_url.is_not(None),
            Source.enabled.is_(True),
            Source.next_poll_at <= now,
        )
        .values(next_poll_at=now + POLL_LEASE)
        .returning(
            Source.name, Source.poll_url, Source.poll_every, Source.poll_etag, Source.poll_last_modified
        )
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise SkipEvent(f"source {source_id} is not due for a poll")
    return PollRequest(
        source_id=source_id,
        name=row.name,
        url=row.poll_url or "",
        every=max(1, row.poll_every or 60),
        etag=row.poll_etag,
        last_modified=row.poll_last_modified,
    )


def fetch_poll(request: PollRequest, *, max_bytes: int | None = None) -> PollResponse:
    """GET the source's URL conditionally; never raises for what the network or server does."""
    limit = max_bytes if max_bytes is not None else get_settings().max_body_bytes
    headers = {"Accept": POLL_ACCEPT, "User-Agent": "newsroom-poller/1"}
    if request.etag:
        headers["If-None-Match"] = request.etag
    if request.last_modified:
        headers["If-Modified-Since"] = request.last_modified
    deadline = time.monotonic() + POLL_DEADLINE_SECONDS
    try:
        with (
            # Every connection, the redirects' included, goes only where it may (shared.egress).
            egress.client(timeout=POLL_TIMEOUT, follow_redirects=True, max_redirects=5) as client,
            client.stream("GET", request.url, headers=headers) as response,
        ):
            validators = {
                "etag": response.headers.get("etag"),
                "last_modified": response.headers.get("last-modified"),
            }
            if response.status_code == 304:
                return PollResponse(status=304, **validators)
            if response.status_code != 200:
                reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
                return PollResponse(status=response.status_code, error=reason)
            chunks: list[bytes] = []
            size = 0
            # Decoded bytes are counted, so a small gzip bomb is cut off like a large body.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return PollResponse(status=200, error=f"the document is over {limit} bytes")
                if time.monotonic() > deadline:
                    return PollResponse(
                        status=200, error=f"no complete answer in {POLL_DEADLINE_SECONDS:.0f}s"
                    )
                chunks.append(chunk)
            return PollResponse(
                status=200,
                content_type=response.headers.get("content-type"),
                body=b"".join(chunks),
                **validators,
            )
    except httpx.HTTPError as error:
        return PollResponse(error=f"{type(error).__name__}: {error}".rstrip(": "))


def record_poll(
    session: Session, *, request: PollRequest, response: PollResponse, now: datetime | None = None
) -> str:
    """Store what a poll fetched through the push path, and when to poll next; returns the outcome."""
    now = now or utcnow()
    source = session.get_one(Source, request.source_id)
    if response.error is not None:
        return _poll_failed(source, now, response.error)
    if response.status == 304:
        _poll_succeeded(source, now, response)
        log.info("source %s (%s): not modified", source.id, source.name)
        return "not_modified"
    body = response.body
    latest = session.scalars(
        select(Receipt).where(Receipt.source_id == source.id).order_by(Receipt.id.desc()).limit(1)
    ).first()
    if latest is not None and latest.size == len(body) and bytes(latest.body) == body:
        # A server without validators sends the same bytes again: nothing new to store.
        if latest.status == "rejected":
            return _poll_failed(source, now, _receipt_reason(latest))
        _poll_succeeded(source, now, response)
        log.info("source %s (%s): same document as receipt %s", source.id, source.name, latest.id)
        return "unchanged"
    media_type = (response.content_type or "").partition(";")[0].strip().lower()
    content_type = response.content_type if media_type in _SPECIFIC_TYPES else None
    result = accept_post(session, source=source, content_type=content_type, body=body)
    empty = result.status == 422 and result.receipt.item_count == 0
    if result.status != 202 and not empty:
        return _poll_failed(source, now, f"receipt {result.receipt_id}: {result.error}: {result.detail}")
    _poll_succeeded(source, now, response)
    log.info(
        "source %s (%s): receipt %s with %d items", source.id, source.name, result.receipt_id, result.items
    )
    return "received"


def _receipt_reason(receipt: Receipt) -> str:
    error = receipt.error or {}
    return f"receipt {receipt.id}: {error.get('error')}: {error.get('detail')}"


def _poll_succeeded(source: Source, now: datetime, response: PollResponse) -> None:
    if response.status == 200 or response.etag:
        source.poll_etag = response.etag
    if response.status == 200 or response.last_modified:
        source.poll_last_modified = response.last_modified
    source.poll_failures = 0
    source.last_error = None
    # A source disabled while its poll ran is not polled again.
    source.next_poll_at = now + timedelta(seconds=max(1, source.poll_every or 60)) if source.enabled else None


def poll_backoff(every: int, failures: int) -> timedelta:
    """How long a failing source rests: its interval doubled per failure in a row, capped."""
    seconds = max(1, every) * 2 ** min(failures, 30)
    return min(POLL_BACKOFF_CAP, timedelta(seconds=seconds))


def _poll_failed(source: Source, now: datetime, error: str) -> str:
    source.poll_failures += 1
    source.last_error = error[:2000]
    delay = poll_backoff(source.poll_every or 60, source.poll_failures)
    source.next_poll_at = now + delay if source.enabled else None
    log.warning(
        "source %s (%s): poll failed %d times in a row, next in %ds: %s",
        source.id,
        source.name,
        source.poll_failures,
        delay.total_seconds(),
        error,
    )
    return "failed"
