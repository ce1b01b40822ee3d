"""Syndicate: which stories each feed shows, rendering once per burst, serving, exporting.

A change marks the feeds it touches dirty (``feeds.dirty_at``, in the database). Render
rounds render the dirty feeds (``all`` first, then the feeds rendered longest ago, for
about ``ROUND_BUDGET`` each) and store their bytes. The first change after a round began
schedules the next one, ``round_spacing()`` after it: close behind the changes at the rates
the pipeline is sized for, further apart in a burst. Feeds left dirty because their
``FEED_INTERVAL`` has not passed get a round of their own when it has, which never holds
back the round a change schedules. A feed's flag is cleared only when a
render that saw its last change is stored, and the scheduler's sweep starts a round while
any feed stays dirty, so a lost message or a dead worker delays a feed but never loses a
change. Redis holds only the timing (when the last round began, whether one is scheduled,
the change rate) and a lock per feed.

Reader pages are rendered in the same rounds (``site.py``): the front page with ``all``, the
page of a tag, author or section with its feed, in one transaction; story pages and the news
sitemap, flagged when their stories change, at the start of each round.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy.orm import Session

from services.syndicate import pages, site
from services.syndicate.feeds import (
    FEED_FORMATS,
    ITEM_KEY_COLUMNS,
    LABELS,
    FeedKey,
    Item,
    RenderedFeed,
    feed_items,
    feed_url,
    parse_feed_name,
    render_feed,
    render_items,
    section_slug,
)
from shared import tasknames
from shared.config import get_settings
from shared.db import after_commit, session_scope
from shared.metrics import observe_publish_to_feed
from shared.models import Feed, FeedDocument, Story, StoryLabel, StoryTag, utcnow
from shared.outbox import emit
from shared.redis import get_redis

log = logging.getLogger(__name__)

# A lock per feed (this prefix and the name): one renderer at a time for each.
RENDER_LOCK = "newsroom:lock:feed"
# Set while a render round is scheduled; whoever sets it schedules the round.
ROUND_PENDING = "newsroom:feeds:round-pending"
# A lock on the story pages and the sitemap: one round renders them at a time.
PAGES_LOCK = "newsroom:lock:pages"
PAGES_LOCK_WAIT = 2.0
# Set while a round for feeds waiting out their FEED_INTERVAL is scheduled.
LATER_PENDING = "newsroom:feeds:later-pending"
# When the last round began (unix seconds).
LAST_ROUND = "newsroom:feeds:last-round"
# Feed names whose stored documents changed, for the API's in-memory copies.
FEEDS_CHANNEL = "newsroom:feeds:changed"

# The first change after a quiet spell waits this long for the rest of its burst.
FIRST_GATHER = 0.05
# Up to FOLLOW_RATE story changes a second, rounds begin ROUND_SPACING apart, so a change
# reaches its feeds within about that long. Faster than that the pipeline is in a burst:
# a round then waits to carry about CHANGES_PER_BURST_ROUND changes (up to
# MAX_ROUND_SPACING), so a burst of 200 publishes renders each feed about 8 times.
FOLLOW_RATE = 60.0
ROUND_SPACING = 0.12
CHANGES_PER_BURST_ROUND = 25
MAX_ROUND_SPACING = 1.0
# More messages than this waiting on the ingest and publish queues is a burst too, whatever
# the rate: the workers are behind, and rounds give way to the stories themselves.
BACKLOG = 25
CHANGES = "newsroom:feeds:changes"
# A scheduled round that never ran (its worker died) stops blocking new ones after this.
PENDING_TTL_MS = 3000
RENDER_LOCK_TIMEOUT = 120
ROUND_LIMIT = 1000
# Seconds of rendering a round does before it leaves the rest of the dirty feeds to the next.
ROUND_BUDGET = 0.1
# ``all``, the feed most readers poll, is rendered in every round it is dirty; any other feed
# at most this often, so that a story's section, tags, author and labels do not multiply
# the renders of a busy hour.
FEED_INTERVAL = 1.0


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


# Upserts are built once per dialect, with every value a parameter: an ON CONFLICT clause
# that holds values is compiled anew at each execution (SQLAlchemy cannot cache it).
FEEDS = cast(Table, Feed.__table__)
DOCUMENTS = cast(Table, FeedDocument.__table__)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


@functools.cache
def _counted_statement(dialect: str, *, clears: bool) -> Any:
    """A feed's render counted; with ``clears``, its flag cleared unless a change marked it since
    the round read it (``seen``)."""
    statement = site.insert_for(dialect)(FEEDS)
    counted = {"renders": FEEDS.c.renders + 1, "rendered_at": statement.excluded.rendered_at}
    if clears:
        dirty = FEEDS.c.dirty_at
        counted["dirty_at"] = case((dirty == bindparam("seen"), None), else_=dirty)
    return statement.on_conflict_do_update(index_elements=["key"], set_=counted)


@functools.cache
def _first_document_statement(dialect: str) -> Any:
    statement = site.insert_for(dialect)(DOCUMENTS)
    new = statement.excluded
    columns = ("body", "etag", "last_modified", "rendered_at")
    return statement.on_conflict_do_update(
        index_elements=["key", "format"],
        set_={column: new[column] for column in columns},
        where=DOCUMENTS.c.rendered_at <= new.rendered_at,
    )


def mark_dirty(session: Session, keys: Iterable[FeedKey]) -> list[str]:
    """Flag feeds for rendering; the next round renders each of them once."""
    # Sorted, so that concurrent markers lock the rows in one order.
    names = sorted({key.name for key in keys})
    if not names:
        return []
    now = utcnow()
    session.flush()  # the changes that call for the flags go first, as they always have
    rows = [{"key": name, "dirty_at": now, "renders": 0} for name in names]
    session.connection().execute(site.flag_statement(_dialect(session), FEEDS, "key"), rows)
    return names


def stories_changed(
    session: Session, changes: Sequence[dict[str, Any]], *, current: bool = False
) -> list[str]:
    """Mark every feed the changed stories were or are in as needing a render.

    Each change names its story (``story_id``) and its membership before (``previous``).
    With ``current`` the changes were made in this very transaction, so the membership
    each recorded after it (``current``, with the slug) is the story's as it commits:
    it is not read again.
    """
    keys: list[FeedKey] = []
    story_pages: list[str] = []
    for change in changes:
        keys += keys_from_membership(change.get("previous") or {})
        after = change.get("current") if current else None
        if after and after.get("slug"):
            keys += keys_from_membership(after)
            story_pages.append(story_page_path(after["slug"]))
    known = {
        change["story_id"] for change in changes if current and (change.get("current") or {}).get("slug")
    }
    ids = sorted({change["story_id"] for change in changes if change.get("story_id") is not None} - known)
    if ids:
        # What puts each story in feeds now, read as columns (no whole stories to load).
        now: dict[int, dict[str, Any]] = {}
        for row in session.execute(
            select(Story.id, Story.slug, Story.section, Story.author_slug).where(Story.id.in_(ids))
        ):
            now[row.id] = {"section": row.section, "author": row.author_slug, "tags": [], "labels": []}
            story_pages.append(story_page_path(row.slug))
        for story_id, slug in session.execute(
            select(StoryTag.story_id, StoryTag.slug).where(StoryTag.story_id.in_(ids))
        ):
            now[story_id]["tags"].append(slug)
        for story_id, label in session.execute(
            select(StoryLabel.story_id, StoryLabel.label).where(StoryLabel.story_id.in_(ids))
        ):
            now[story_id]["labels"].append(label)
        for membership in now.values():
            keys += keys_from_membership(membership)
    # Each story's own page, and the sitemap that lists the last two days' stories.
    site.flag_pages(session, [*story_pages, site.SITEMAP] if story_pages else [])
    return mark_dirty(session, keys)


def story_page_path(slug: str) -> str:
    """The path of a story's page, as stored (and as a request's decoded path reads)."""
    return f"{site.STORIES}{slug}"


def stories_for(session: Session, key: FeedKey, *, limit: int) -> list[Story]:
    """The newest published stories of a feed, by published_at."""
    return list(session.scalars(_feed_query(key, select(Story), limit=limit)))


def items_for(session: Session, key: FeedKey, *, limit: int) -> tuple[list[Item], list[datetime]]:
    """A feed's entries, and when each of its stories last changed.

    Only the columns that key an entry are read for the whole feed; stories whose entry
    is not built yet are loaded in one query.
    """
    rows = session.execute(_feed_query(key, select(*ITEM_KEY_COLUMNS), limit=limit)).all()

    def load(ids: list[int]) -> Iterable[Story]:
        return session.scalars(select(Story).where(Story.id.in_(ids)))

    items = feed_items([tuple(row) for row in rows], load, settings=get_settings())
    changed = [max(filter(None, (row.published_at, row.updated_at))) for row in rows]
    return items, changed


def _feed_query(key: FeedKey, query: Any, *, limit: int) -> Any:
    return site.in_feed(query, key).order_by(Story.published_at.desc(), Story.id.desc()).limit(limit)


# ---------------------------------------------------------------------------------------------
# Rendering and storing one feed


def render_documents(key: FeedKey, stories: Sequence[Story]) -> dict[str, RenderedFeed]:
    """The feed in every format."""
    settings = get_settings()
    return {fmt: render_feed(key, fmt, stories, settings=settings) for fmt in FEED_FORMATS}  # type: ignore[arg-type]


def render_item_documents(key: FeedKey, items: Sequence[Item]) -> dict[str, RenderedFeed]:
    """The feed in every format, from its entries."""
    settings = get_settings()
    return {fmt: render_items(key, fmt, items, settings=settings) for fmt in FEED_FORMATS}  # type: ignore[arg-type]


def store_documents(
    session: Session, key: FeedKey, rendered: dict[str, RenderedFeed], *, snapshot: datetime
) -> list[FeedDocument]:
    """Store the documents that changed; return them.

    ``snapshot`` is when the stories were read: a document stored from a later read is
    never replaced by this one. Last-Modified never goes back for a feed, even when its
    newest story leaves it, so If-Modified-Since stays right.
    """
    changed = []
    now = utcnow().replace(microsecond=0)
    # The stored documents' headers only (not their bodies), locked until this commits.
    columns = (FeedDocument.format, FeedDocument.etag, FeedDocument.last_modified, FeedDocument.rendered_at)
    stored = {
        row.format: row
        for row in session.execute(select(*columns).where(FeedDocument.key == key.name).with_for_update())
    }
    updates: list[dict[str, Any]] = []
    for fmt, feed in rendered.items():
        row = stored.get(fmt)
        if row is not None and (row.rendered_at > snapshot or row.etag == feed.etag):
            continue
        last_modified = feed.last_modified
        if row is not None and last_modified <= row.last_modified:
            last_modified = max(row.last_modified + timedelta(seconds=1), now)
        values = {
            "body": feed.body,
            "etag": feed.etag,
            "last_modified": last_modified,
            "rendered_at": snapshot,
        }
        if row is None:
            # A feed first stored by two renders at once (a round and a reader's request): the
            # later read wins.
            statement = _first_document_statement(_dialect(session))
            session.connection().execute(statement, {"key": key.name, "format": fmt, **values})
        else:
            updates.append({"document_format": fmt, **values})
        changed.append(FeedDocument(key=key.name, format=fmt, **values))
    if updates:  # sent together (one round trip with psycopg's pipeline)
        table = FeedDocument.metadata.tables[FeedDocument.__tablename__]
        where = (table.c.key == key.name, table.c.format == bindparam("document_format"))
        session.connection().execute(update(table).where(*where), updates)
    return changed


# render_feed_now reads when the feed was last rendered, unless its caller has just read it.
_READ = object()


def render_feed_now(name: str, *, seen: datetime | None, last: datetime | object | None = _READ) -> list[str]:
    """Render one feed from the database and store it; return the formats that changed.

    ``seen`` is the dirty mark this render answers: the flag is cleared only if no change
    marked the feed again meanwhile, and only once the documents are stored, so a render
    that dies half-way leaves the feed dirty for the next round. ``last`` is when the feed
    was last rendered, if the caller read it with the mark.
    """
    key = parse_feed_name(name)
    if key is None:
        with session_scope() as session:
            session.execute(update(Feed).where(Feed.key == name).values(dirty_at=None))
        log.warning("feed %s: not a feed name; flag cleared", name)
        return []
    snapshot = utcnow()
    with session_scope(read_only=True) as session:
        job = _read_feed(session, key, seen=seen, last=last, snapshot=snapshot)
    job.render()
    with session_scope() as session:
        announced = _store_feed(session, job)
        if announced:
            after_commit(session, lambda: _announce_stored(*announced))
    job.done()
    return job.formats


@dataclass(slots=True)
class _FeedRender:
    """One feed's render: read in one transaction, rendered outside it, stored in another."""

    key: FeedKey
    seen: datetime | None
    snapshot: datetime
    items: list[Item]
    # When each story in it last changed, and when the feed was rendered before.
    moments: list[datetime]
    previous: datetime | None
    page_bodies: dict[str, site.Rendered]
    rendered: dict[str, RenderedFeed] = field(default_factory=dict)
    formats: list[str] = field(default_factory=list)
    changed_pages: list[str] = field(default_factory=list)

    @property
    def what(self) -> str:
        return f"feed {self.key.name}"

    @property
    def count(self) -> int:
        return 1

    def wanted(self) -> bool:
        return True

    def render(self) -> None:
        self.rendered = render_item_documents(self.key, self.items)

    def store(self, session: Session) -> list[str]:
        return _store_feed(session, self)

    def done(self) -> None:
        if self.formats and self.key.kind == "all" and self.previous is not None:
            previous = self.previous
            _observe_latency([m for m in self.moments if m > previous], stored_at=utcnow())
        log.info(
            "feed %s rendered from %d stories; changed: %s",
            self.key.name,
            len(self.items),
            ",".join([*self.formats, *self.changed_pages]) or "none",
        )


def _read_feed(
    session: Session,
    key: FeedKey,
    *,
    seen: datetime | None,
    last: datetime | object | None,
    snapshot: datetime,
) -> _FeedRender:
    settings = get_settings()
    previous = (
        session.scalar(select(Feed.rendered_at).where(Feed.key == key.name))
        if last is _READ
        else cast(datetime | None, last)
    )
    items, moments = items_for(session, key, limit=settings.feed_size)
    # The pages showing this feed's stories, read after it: never behind it.
    page_bodies = _list_pages(session, key, settings=settings)
    return _FeedRender(key, seen, snapshot, items, moments, previous, page_bodies)


def _store_feed(session: Session, job: _FeedRender) -> list[str]:
    """Store a rendered feed and its pages; return the names to announce once committed."""
    settings = get_settings()
    key, snapshot = job.key, job.snapshot
    changed = store_documents(session, key, job.rendered, snapshot=snapshot)
    job.changed_pages = site.store_pages(session, job.page_bodies, snapshot=snapshot)
    # One statement: the render counted, and the flag cleared if no change marked it since.
    statement = _counted_statement(_dialect(session), clears=job.seen is not None)
    row = {"key": key.name, "renders": 1, "rendered_at": snapshot, "seen": job.seen}
    session.connection().execute(statement, row)
    job.formats = [document.format for document in changed]
    if changed and settings.hubs:
        urls = [feed_url(key, fmt, settings=settings) for fmt in job.formats]  # type: ignore[arg-type]
        emit(session, tasknames.PING_HUBS, {"urls": urls})
    return ([key.name] if changed else []) + [PAGE_PREFIX + path for path in job.changed_pages]


def _list_pages(session: Session, key: FeedKey, *, settings: Any) -> dict[str, site.Rendered]:
    """The pages rendered with a feed: for ``all`` the front page and the "More news" list,
    for a tag, author or section its page (no body: nothing published there)."""
    if key.kind == "all":
        front, more_news = site.render_front(session, settings=settings)
        return {site.FRONT: (front, None), site.MORE_NEWS: (more_news, None)}
    path = site.list_page_path(key)
    if path is None:
        return {}
    return {path: (site.render_list(session, key, settings=settings), None)}


def _observe_latency(changes: list[datetime], *, stored_at: datetime) -> None:
    try:
        observe_publish_to_feed(*(max(0.0, (stored_at - moment).total_seconds()) for moment in changes))
    except Exception as error:  # a metric never fails a render
        log.warning("publish-to-feed latency not recorded: %s", error)


# Announced names of pages start with this (feeds' names never do).
PAGE_PREFIX = "page:"


def _announce_stored(*names: str) -> None:
    """Tell the API processes which feeds and pages changed, in one message (so that a reader
    who sees a story in a feed sees it on the pages stored with it)."""
    try:
        get_redis().publish(FEEDS_CHANNEL, "\n".join(names))
    except Exception as error:  # readers' copies expire on their own
        log.warning("%s: change not announced to the API: %s", ", ".join(names[:5]), error)


# ---------------------------------------------------------------------------------------------
# Render rounds: once per burst


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What a render round did, and when the caller should try again (seconds), if at all."""

    rendered: int
    retry_in: float | None = None
    # Feeds left waiting out their interval are due in this many seconds: a round then.
    later_in: float | None = None


def note_change(count: int = 1) -> None:
    """Count story changes, for the rate that sets the rounds' spacing."""
    second = int(time.time())
    pipe = get_redis().pipeline()
    pipe.incrby(f"{CHANGES}:{second}", count)
    pipe.expire(f"{CHANGES}:{second}", 5)
    pipe.execute()


def change_rate() -> float:
    """Story changes in about the last second (a sliding window over two counters)."""
    now = time.time()
    second = int(now)
    current, previous = get_redis().mget(f"{CHANGES}:{second}", f"{CHANGES}:{second - 1}")
    return int(current or 0) + int(previous or 0) * (1 - (now - second))


def round_spacing() -> float:
    """How far apart rounds begin: close behind the changes, unless they come in a burst."""
    rate = change_rate()
    if rate <= FOLLOW_RATE and not _backlog():
        return ROUND_SPACING
    return min(MAX_ROUND_SPACING, max(ROUND_SPACING, CHANGES_PER_BURST_ROUND / max(rate, 1.0)))


def _backlog() -> bool:
    pipe = get_redis().pipeline(transaction=False)
    for queue in ("ingest", "publish"):
        pipe.llen(queue)
    return sum(int(depth) for depth in pipe.execute()) > BACKLOG


def claim_round() -> float | None:
    """If no round is scheduled, claim the scheduling of the next one; return its delay."""
    redis = get_redis()
    if not redis.set(ROUND_PENDING, 1, nx=True, px=PENDING_TTL_MS):
        return None
    return max(FIRST_GATHER, _until_next_round())


def claim_later(delay: float) -> bool:
    """Claim the scheduling of a round for feeds waiting out their interval, due in ``delay``.

    It is kept apart from the rounds changes schedule: a story published meanwhile still
    reaches ``all`` one round spacing later, not when the slower feeds are due.
    """
    return bool(get_redis().set(LATER_PENDING, 1, nx=True, px=max(1, int(delay * 1000))))


def _until_next_round() -> float:
    last = get_redis().get(LAST_ROUND)
    if last is None:
        return 0.0
    return float(last) + round_spacing() - time.time()


def run_round(*, scheduled: bool) -> RoundOutcome:
    """Render the dirty feeds, unless a round began too recently.

    ``scheduled`` rounds were claimed by a change (``claim_round``) and reschedule
    themselves until they run; the scheduler's sweeps and the rounds for feeds waiting out
    their interval (not scheduled) step aside for a scheduled round and only make sure one
    exists. Rounds may overlap in different
    processes: each feed is rendered by one of them at a time.
    """
    redis = get_redis()
    if not scheduled and redis.exists(ROUND_PENDING):
        return RoundOutcome(0)
    wait = _until_next_round()
    if wait > 0:
        if scheduled:
            redis.set(ROUND_PENDING, 1, px=PENDING_TTL_MS)
            return RoundOutcome(0, retry_in=wait)
        return RoundOutcome(0, retry_in=claim_round())
    # Changes from here on schedule the next round; earlier ones are read by this one.
    if scheduled:
        redis.delete(ROUND_PENDING)
    redis.set(LAST_ROUND, repr(time.time()), ex=60)
    rendered, left_in = render_dirty()
    if left_in is None:
        return RoundOutcome(rendered)
    if left_in <= 0:  # out of time, or a feed was being rendered elsewhere: go on soon
        return RoundOutcome(rendered, retry_in=claim_round())
    return RoundOutcome(rendered, later_in=left_in if claim_later(left_in) else None)


def render_dirty(*, limit: int = ROUND_LIMIT, budget: float = ROUND_BUDGET) -> tuple[int, float | None]:
    """Render dirty feeds for about ``budget`` seconds.

    Returns how many were rendered, and in how many seconds the dirty feeds left over are
    due (None when none are). ``all`` goes first, then the feeds rendered longest ago, so
    that in a long burst every feed takes its turn while ``all`` stays fresh; a feed other
    than ``all`` waits until ``FEED_INTERVAL`` has passed since its last render.

    The flagged story pages and ``all`` (with the front page) are read in one transaction
    and stored in one, so a round costs two transactions however many stories it carries.
    """
    redis = get_redis()
    started = time.monotonic()
    rendered = 0
    pages_lock = redis.lock(PAGES_LOCK, timeout=RENDER_LOCK_TIMEOUT)
    # A round rendering pages elsewhere is waited for (briefly): the lists this round renders
    # then link to pages already stored.
    pages_locked = pages_lock.acquire(blocking=True, blocking_timeout=PAGES_LOCK_WAIT)
    left_in: float | None = None if pages_locked else 0.0
    feed_locks: list[Any] = []
    try:
        snapshot = utcnow()
        pages_job: _PagesRender | None = None
        all_job: _FeedRender | None = None
        with session_scope(read_only=True) as session:
            if pages_locked:
                try:
                    pages_job = _read_pages(session, site.STORY_PAGES_PER_ROUND, budget, snapshot=snapshot)
                except Exception:  # the flags stay set: the next round tries again
                    log.exception("pages: render failed")
                    left_in = 0.0
            dirty = _dirty_feeds(session, limit)
            if dirty and dirty[0][0] == "all":
                name, seen, last = dirty.pop(0)
                lock = redis.lock(f"{RENDER_LOCK}:{name}", timeout=RENDER_LOCK_TIMEOUT, blocking=False)
                if lock.acquire(blocking=False):
                    feed_locks.append(lock)
                    try:
                        all_job = _read_feed(session, FeedKey("all"), seen=seen, last=last, snapshot=snapshot)
                    except Exception:  # the flag stays set: the next round tries again
                        log.exception("feed all: render failed")
                else:
                    left_in = 0.0  # another round is rendering it; its flag says if it must go again
        if pages_job is not None and pages_job.left_in is not None:
            left_in = pages_job.left_in if left_in is None else min(left_in, pages_job.left_in)
        if all_job is not None:
            try:
                all_job.render()
            except Exception:
                log.exception("feed all: render failed")
                all_job = None
        rendered, feeds_rendered = _store_round(pages_job, all_job)
    finally:
        if pages_locked:
            _release(pages_lock, "pages")
        for lock in feed_locks:
            _release(lock, "all")
    # The other feeds: their own budget, as in every round however many pages waited.
    started = time.monotonic()
    now = utcnow()
    for name, seen, last in dirty:
        if feeds_rendered and time.monotonic() - started > budget:
            return rendered, 0.0
        due_in = 0.0 if name == "all" or last is None else FEED_INTERVAL - (now - last).total_seconds()
        if due_in > 0:
            left_in = due_in if left_in is None else min(left_in, due_in)
            continue
        lock = redis.lock(f"{RENDER_LOCK}:{name}", timeout=RENDER_LOCK_TIMEOUT, blocking=False)
        if not lock.acquire(blocking=False):
            left_in = 0.0  # another round is rendering it; its flag says if it must go again
            continue
        try:
            render_feed_now(name, seen=seen, last=last)
            rendered += 1
            feeds_rendered += 1
        except Exception:  # the flag stays set: the next round tries again
            log.exception("feed %s: render failed", name)
        finally:
            _release(lock, name)
    return rendered, left_in


def _dirty_feeds(session: Session, limit: int) -> list[tuple[str, datetime, datetime | None]]:
    """The flagged feeds: (name, mark, last render), ``all`` first, then the longest unrendered."""
    dirty = [
        (row.key, row.dirty_at, row.rendered_at)
        for row in session.execute(
            select(Feed.key, Feed.dirty_at, Feed.rendered_at)
            .where(Feed.dirty_at.is_not(None))
            .order_by(Feed.rendered_at.asc().nulls_first(), Feed.key)
            .limit(limit)
        )
    ]
    dirty.sort(key=lambda row: row[0] != "all")
    return dirty


def _store_round(pages_job: _PagesRender | None, all_job: _FeedRender | None) -> tuple[int, int]:
    """Store a round's pages and ``all`` in one transaction; return how many pages and feeds
    were rendered, and how many of them feeds.

    If that fails, each is stored on its own, so that a page that cannot be stored never
    holds up the feed (nor the other way round).
    """
    jobs: list[_PagesRender | _FeedRender] = [
        job for job in (pages_job, all_job) if job is not None and job.wanted()
    ]
    if not jobs:
        return 0, 0
    stored: list[_PagesRender | _FeedRender] = []
    try:
        with session_scope() as session:
            announced = [name for job in jobs for name in job.store(session)]
            if announced:
                after_commit(session, lambda: _announce_stored(*announced))
        stored = jobs
    except Exception:
        if len(jobs) > 1:
            log.warning("the round's pages and feed could not be stored together; each alone", exc_info=True)
        for job in jobs if len(jobs) > 1 else []:
            try:
                with session_scope() as session:
                    names = job.store(session)
                    if names:
                        after_commit(session, lambda names=names: _announce_stored(*names))  # type: ignore[misc]
                stored.append(job)
            except Exception:  # its flags stay set: the next round tries again
                log.exception("%s: render failed", job.what)
        if len(jobs) == 1:
            log.exception("%s: render failed", jobs[0].what)
    for job in stored:
        job.done()
    return sum(job.count for job in stored), sum(1 for job in stored if isinstance(job, _FeedRender))


def _release(lock: Any, what: str) -> None:
    try:
        lock.release()
    except Exception:  # it timed out; the dirty flags keep the work
        log.warning("%s: render lock expired before release", what)


def render_dirty_pages(
    *, limit: int = site.STORY_PAGES_PER_ROUND, budget: float = ROUND_BUDGET
) -> tuple[int, float | None]:
    """Render the flagged story pages (a story no longer published: its page is gone) and the
    sitemap (at most once per ``SITEMAP_INTERVAL``); stored in one transaction.

    Returns how many pages were rendered, and in how many seconds the pages left over are
    due (None when none are).
    """
    redis = get_redis()
    lock = redis.lock(PAGES_LOCK, timeout=RENDER_LOCK_TIMEOUT)
    if not lock.acquire(blocking=True, blocking_timeout=PAGES_LOCK_WAIT):
        return 0, 0.0
    try:
        with session_scope(read_only=True) as session:
            job = _read_pages(session, limit, budget, snapshot=utcnow())
        return _store_round(job, None)[0], job.left_in
    except Exception:  # the flags stay set: the next round tries again
        log.exception("pages: render failed")
        return 0, 0.0
    finally:
        _release(lock, "pages")


@dataclass(slots=True)
class _PagesRender:
    """The flagged pages rendered from one read, to be stored."""

    snapshot: datetime
    rendered: dict[str, site.Rendered]
    answered: list[tuple[str, datetime]]
    left_in: float | None
    changed: list[str] = field(default_factory=list)
    what = "pages"

    @property
    def count(self) -> int:
        return len(self.answered)

    def wanted(self) -> bool:
        return bool(self.answered)

    def store(self, session: Session) -> list[str]:
        self.changed = site.store_pages(session, self.rendered, snapshot=self.snapshot)
        site.clear_flags(session, self.answered)
        return [PAGE_PREFIX + path for path in self.changed]

    def done(self) -> None:
        log.info("pages rendered: %d; changed: %s", self.count, ", ".join(self.changed[:20]) or "none")


def _read_pages(session: Session, limit: int, budget: float, *, snapshot: datetime) -> _PagesRender:
    settings = get_settings()
    started = time.monotonic()
    rendered: dict[str, site.Rendered] = {}
    answered: list[tuple[str, datetime]] = []
    left_in: float | None = None
    dirty = site.dirty_pages(session, limit=limit + 1)
    if len(dirty) > limit:
        dirty, left_in = dirty[:limit], 0.0
    # The stories of these pages in one query (their tags and labels in one more each).
    stories = site.published_stories(
        session, [path[len(site.STORIES) :] for path, _, _ in dirty if path.startswith(site.STORIES)]
    )
    for path, mark, last in dirty:
        if answered and time.monotonic() - started > budget:
            left_in = 0.0  # the rest in the next round
            break
        if path == site.SITEMAP:
            due_in = 0.0 if last is None else site.SITEMAP_INTERVAL - (snapshot - last).total_seconds()
            if due_in > 0:
                left_in = due_in if left_in is None else min(left_in, due_in)
                continue
            rendered[path] = (site.render_sitemap(session, settings=settings), None)
        elif path.startswith(site.STORIES):
            story = stories.get(path[len(site.STORIES) :])
            rendered[path] = (None, None) if story is None else site.story_page(story, settings=settings)
        answered.append((path, mark))
    return _PagesRender(snapshot, rendered, answered, left_in)


# ---------------------------------------------------------------------------------------------
# Serving and exporting


@dataclass(frozen=True, slots=True)
class StoredFeed:
    """A stored feed document, detached from its session."""

    name: str
    format: str
    body: bytes
    etag: str
    last_modified: datetime


def _stored(document: FeedDocument) -> StoredFeed:
    return StoredFeed(
        document.key, document.format, bytes(document.body), document.etag, document.last_modified
    )


def stored_document(session: Session, name: str, fmt: str) -> StoredFeed | None:
    """A feed as last rendered, if it was."""
    key = parse_feed_name(name)
    if key is None or fmt not in FEED_FORMATS:
        return None
    document = session.get(FeedDocument, (key.name, fmt))
    return None if document is None else _stored(document)


def load_document(name: str, fmt: str) -> StoredFeed | None:
    """A stored feed; rendered on first request if it shows any story (or is ``all``)."""
    key = parse_feed_name(name)
    if key is None or fmt not in FEED_FORMATS:
        return None
    with session_scope(read_only=True) as session:
        document = stored_document(session, key.name, fmt)
        if document is not None:
            return document
        if key.kind != "all" and not stories_for(session, key, limit=1):
            return None
    render_feed_now(key.name, seen=None)
    with session_scope(read_only=True) as session:
        return stored_document(session, key.name, fmt)


def load_page(path: str) -> site.StoredPage | None:
    """A stored page: ``/``, the "More news" list, the sitemap, or the page of a tag, author
    or section (rendered now with its feed if it never was) or of a story (rendered now if it
    is published and was not yet). None: no such page."""
    with session_scope(read_only=True) as session:
        stored = site.stored_page(session, path)
    if stored is not None and not (path == site.SITEMAP and _aged(stored)):
        return stored
    if path in (site.FRONT, site.MORE_NEWS):
        render_feed_now("all", seen=None)
    elif path == site.SITEMAP or path.startswith(site.STORIES):
        settings = get_settings()
        snapshot = utcnow()
        with session_scope(read_only=True) as session:
            if path == site.SITEMAP:
                rendered: dict[str, site.Rendered] = {
                    path: (site.render_sitemap(session, settings=settings), None)
                }
            else:
                page = site.render_story(session, path[len(site.STORIES) :], settings=settings)
                if page is None:  # no page is stored for a story that is not published
                    return None
                rendered = {path: (page[1], page[0])}
        with session_scope() as session:
            changed = site.store_pages(session, rendered, snapshot=snapshot)
            if changed:
                after_commit(session, lambda: _announce_stored(*(PAGE_PREFIX + p for p in changed)))
    else:
        key = list_key(path)
        if key is None:
            return None
        with session_scope(read_only=True) as session:
            if not stories_for(session, key, limit=1):
                return None
        render_feed_now(key.name, seen=None)
    with session_scope(read_only=True) as session:
        return site.stored_page(session, path)


def _aged(page: site.StoredPage) -> bool:
    """Whether a stored sitemap may list stories older than its window by now."""
    return page.rendered_at is None or utcnow() - page.rendered_at > site.SITEMAP_REFRESH


def list_key(path: str) -> FeedKey | None:
    for kind in site.PAGE_KINDS:
        prefix = pages.LIST_PATHS[kind]
        if path.startswith(prefix):
            key = parse_feed_name(f"{kind}/{path[len(prefix) :]}")
            return key if key is not None and site.list_page_path(key) == path else None
    return None


def sitemap(session: Session) -> bytes:
    """The Google News sitemap as stored (rendered now if it never was)."""
    stored = site.stored_page(session, site.SITEMAP)
    if stored is not None and stored.body is not None:
        return stored.body
    return site.render_sitemap(session, settings=get_settings())


def export_feeds(directory: Path) -> list[Path]:
    """Write every feed and the news sitemap under ``directory``, each atomically."""
    written = []
    with session_scope(read_only=True) as session:
        names = set(session.scalars(select(Feed.key))) | set(session.scalars(select(FeedDocument.key)))
    for name in ["all", *sorted(names - {"all"})]:
        if parse_feed_name(name) is None:
            continue
        for fmt in FEED_FORMATS:
            document = load_document(name, fmt)
            if document is None:
                continue
            target = directory / "feeds" / f"{name}.{fmt}"
            _atomic_write(target, document.body, modified=document.last_modified)
            written.append(target)
    with session_scope(read_only=True) as session:
        target = directory / "sitemaps" / "news.xml"
        _atomic_write(target, sitemap(session))
        written.append(target)
    log.info("exported %d files to %s", len(written), directory)
    return written


def _atomic_write(target: Path, body: bytes, *, modified: datetime | None = None) -> None:
    """Write ``body`` to a temporary file beside ``target``, then rename it over ``target``.

    A web server reading ``target`` sees the old file or the new one, never half of one.
    The file's mtime is the document's Last-Modified, so nginx sends the same header.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        if modified is not None:
            stamp = modified.timestamp()
            os.utime(temp, (stamp, stamp))
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
