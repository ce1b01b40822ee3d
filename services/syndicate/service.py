"""Syndicate: which stories each feed shows, rendering once per burst, serving, exporting."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.syndicate.feeds import (
    FEED_FORMATS,
    LABELS,
    FeedKey,
    feed_keys_for,
    parse_feed_name,
    render_feed,
    render_news_sitemap,
    section_slug,
)
from shared.config import get_settings
from shared.db import session_scope
from shared.events import emit
from shared.models import Feed, FeedDocument, Story, StoryLabel, StoryTag, utcnow
from shared.redis import get_redis

log = logging.getLogger(__name__)

RENDER_LOCK = "newsroom:lock:feeds"
RENDER_AGAIN = "newsroom:feeds:again"


def keys_from_membership(membership: dict[str, Any]) -> list[FeedKey]:
    """The feeds a story was in, from the membership recorded before a change."""
    keys = [FeedKey("all")]
    if membership.get("section") and (section := section_slug(membership["section"])):
        keys.append(FeedKey("section", section))
    keys += [FeedKey("tag", slug) for slug in membership.get("tags") or [] if slug]
    if membership.get("author"):
        keys.append(FeedKey("author", membership["author"]))
    keys += [FeedKey("label", label) for label in membership.get("labels") or [] if label in LABELS]
    return keys


def _upsert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def mark_dirty(session: Session, keys: Iterable[FeedKey]) -> list[str]:
    """Flag feeds for rendering; the renderer picks them up once per burst."""
    names = sorted({key.name for key in keys})
    now = utcnow()
    for name in names:
        statement = _upsert(session)(Feed).values(key=name, dirty_at=now, renders=0)
        session.execute(statement.on_conflict_do_update(index_elements=["key"], set_={"dirty_at": now}))
    return names


def story_changed(session: Session, *, story_id: int, previous: dict[str, Any]) -> list[str]:
    """Mark every feed the story was or is in as needing a render."""
    story = session.get(Story, story_id)
    keys = keys_from_membership(previous)
    if story is not None:
        keys += feed_keys_for(story)
    return mark_dirty(session, keys)


def stories_for(session: Session, key: FeedKey, *, limit: int) -> list[Story]:
    """The newest published stories of a feed, by published_at."""
    query = select(Story).where(Story.status == "published")
    if key.kind == "section":
        query = query.where(Story.section.ilike(key.value or ""))
    elif key.kind == "author":
        query = query.where(Story.author_slug == key.value)
    elif key.kind == "tag":
        query = query.join(StoryTag, StoryTag.story_id == Story.id).where(StoryTag.slug == key.value)
    elif key.kind == "label":
        query = query.join(StoryLabel, StoryLabel.story_id == Story.id).where(StoryLabel.label == key.value)
    query = query.order_by(Story.published_at.desc(), Story.id.desc()).limit(limit)
    return list(session.scalars(query))


def render_and_store(session: Session, key: FeedKey) -> list[FeedDocument]:
    """Render a feed in every format and store the bytes; return the documents that changed."""
    settings = get_settings()
    stories = stories_for(session, key, limit=settings.feed_size)
    changed = []
    for fmt in FEED_FORMATS:
        rendered = render_feed(key, fmt, stories, settings=settings)  # type: ignore[arg-type]
        document = session.get(FeedDocument, (key.name, fmt))
        if document is not None and document.etag == rendered.etag:
            continue
        if document is None:
            document = FeedDocument(key=key.name, format=fmt)
            session.add(document)
        document.body = rendered.body
        document.etag = rendered.etag
        document.last_modified = rendered.last_modified
        document.rendered_at = utcnow()
        changed.append(document)
    session.execute(update(Feed).where(Feed.key == key.name).values(renders=Feed.renders + 1,
                                                                    rendered_at=utcnow()))  # fmt: skip
    return changed


def render_round(limit: int = 500) -> int:
    """Render every dirty feed once; returns how many feeds were rendered."""
    with session_scope(read_only=True) as session:
        dirty = list(session.execute(
            select(Feed.key, Feed.dirty_at).where(Feed.dirty_at.is_not(None)).limit(limit)
        ))  # fmt: skip
    hubs = get_settings().hubs
    for name, seen in dirty:
        key = parse_feed_name(name)
        with session_scope() as session:
            # Clear only the flag we saw: a change during the render flags it again.
            session.execute(update(Feed).where(Feed.key == name, Feed.dirty_at == seen).values(dirty_at=None))
            if key is None:
                continue
            changed = render_and_store(session, key)
            if changed and hubs:
                site = get_settings().site_url
                urls = [f"{site}/feeds/{name}.{doc.format}" for doc in changed]
                emit(session, "syndicate.ping_hubs", urls=urls)
    return len(dirty)


def render_dirty(*, debounce: float = 0.1, max_seconds: float = 30.0) -> int:
    """Render dirty feeds until none are left; one renderer at a time, others just flag."""
    redis = get_redis()
    # Flag before trying the lock: the holder checks the flag after it lets go.
    redis.set(RENDER_AGAIN, 1, ex=300)
    total = 0
    deadline = time.monotonic() + max_seconds
    while redis.get(RENDER_AGAIN) and time.monotonic() < deadline:
        lock = redis.lock(RENDER_LOCK, timeout=max_seconds + 30, blocking=False)
        if not lock.acquire(blocking=False):
            return total
        try:
            while time.monotonic() < deadline:
                redis.delete(RENDER_AGAIN)
                started = time.monotonic()
                rendered = render_round()
                total += rendered
                if not rendered:
                    break
                # Let a burst of changes gather, so each feed renders once per burst.
                time.sleep(max(0.0, debounce - (time.monotonic() - started)))
        finally:
            try:
                lock.release()
            except Exception:  # the lock timed out; correctness never depends on it
                log.warning("feed render lock expired before release")
    return total


def stored_document(session: Session, name: str, fmt: str) -> FeedDocument | None:
    """A feed as last rendered, if it was."""
    key = parse_feed_name(name)
    if key is None or fmt not in FEED_FORMATS:
        return None
    return session.get(FeedDocument, (key.name, fmt))


def get_document(session: Session, name: str, fmt: str) -> FeedDocument | None:
    """A stored feed, rendering it on first request if it shows any story (or is ``all``)."""
    key = parse_feed_name(name)
    if key is None or fmt not in FEED_FORMATS:
        return None
    document = session.get(FeedDocument, (key.name, fmt))
    if document is not None:
        return document
    if key.kind != "all" and not stories_for(session, key, limit=1):
        return None
    mark_dirty(session, [key])
    session.flush()
    render_and_store(session, key)
    session.execute(update(Feed).where(Feed.key == key.name).values(dirty_at=None))
    return session.get(FeedDocument, (key.name, fmt))


def sitemap(session: Session, *, now: datetime | None = None) -> bytes:
    """The Google News sitemap: stories published in the last 48 hours."""
    from datetime import timedelta

    now = now or utcnow()
    stories = session.scalars(
        select(Story).where(Story.status == "published", Story.published_at >= now - timedelta(hours=48))
        .order_by(Story.published_at.desc()).limit(1000)
    ).all()  # fmt: skip
    return render_news_sitemap(stories, settings=get_settings())


def export_feeds(directory: Path) -> list[Path]:
    """Write every stored feed under ``directory`` atomically (temp file, then rename)."""
    written = []
    with session_scope(read_only=True) as session:
        names = list(session.scalars(select(Feed.key)))
    for name in ["all", *[n for n in names if n != "all"]]:
        with session_scope() as session:
            for fmt in FEED_FORMATS:
                document = get_document(session, name, fmt)
                if document is None:
                    continue
                target = directory / "feeds" / f"{name}.{fmt}"
                _atomic_write(target, document.body)
                written.append(target)
    with session_scope(read_only=True) as session:
        target = directory / "sitemaps" / "news.xml"
        _atomic_write(target, sitemap(session))
        written.append(target)
    return written


def _atomic_write(target: Path, body: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
