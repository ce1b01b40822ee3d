"""Reader pages stored like the feeds: which stories each page shows, rendering, storing.

The front page and the "More news" list of story pages are rendered with the ``all`` feed,
and the page of a tag, author or section with that feed, in the same transaction (a story
is on ``/`` as soon as it is in ``/feeds/all.atom``, and leaves it as soon). A story page is
flagged when its story changes and rendered at the start of the next render round, before
the lists that link to it; the news sitemap likewise, at most once a second. Older pages of
a list (``?before=``) are rendered on request from one indexed key query.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.syndicate import pages
from services.syndicate.feeds import FeedKey, render_news_sitemap
from shared.config import Settings
from shared.models import Page, Story, StoryLabel, StoryTag, utcnow

log = logging.getLogger(__name__)

FRONT = "/"
MORE_NEWS = "more-news"
SITEMAP = "/sitemaps/news.xml"
STORIES = "/stories/"
SITEMAP_WINDOW = timedelta(hours=48)
# The sitemap (up to 1000 stories: 50 ms) is rendered at most this often (a busy hour
# changes stories every second),
# and when read at least this often (its stories leave it after 48 hours, change or not).
SITEMAP_INTERVAL = 5.0
SITEMAP_REFRESH = timedelta(minutes=10)
# A render that changes nothing notes the time at most this often.
STILL_CURRENT = timedelta(minutes=1)
# Story pages rendered in one round at most; the rest wait for the next.
STORY_PAGES_PER_ROUND = 50
# Older pages of a list: how deep a reader may page (50 stories a page).
MAX_PAGES = 200
# ?before=<published_at in microseconds since the epoch>.<story id>
_BEFORE = re.compile(r"(\d{1,17})\.(\d{1,12})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PAGE_KINDS = ("tag", "author", "section")


# A rendered page: its bytes (None: gone, 404) and its story's id (for a story page).
Rendered = tuple[bytes | None, int | None]


class BadPageKey(ValueError):
    """An ``Older`` link's key that this site did not write."""


@dataclass(frozen=True, slots=True)
class StoredPage:
    """A stored page, detached from its session; no body means gone (404)."""

    path: str
    body: bytes | None
    etag: str | None
    last_modified: datetime | None
    story_id: int | None
    rendered_at: datetime | None = None


def page_key(before: tuple[datetime, int]) -> str:
    """The ``?before=`` value that continues a list after this (published_at, id)."""
    moment, story_id = before
    delta = moment.astimezone(UTC) - _EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}.{story_id}"


def parse_page_key(value: str) -> tuple[datetime, int]:
    """The (published_at, id) of a ``?before=`` value; ``BadPageKey`` saying why otherwise."""
    match = _BEFORE.fullmatch(value) if len(value) <= 40 else None
    if match is None:
        raise BadPageKey("This list's 'before' key is not one of ours.")
    return _EPOCH + timedelta(microseconds=int(match.group(1))), int(match.group(2))


def in_feed(query: Any, key: FeedKey) -> Any:
    """Only the published stories of a feed (all, section, tag, author or label)."""
    query = query.where(Story.status == "published")
    if key.kind == "section":
        # Ingest and publish store sections as slugs: the (section, published_at) index answers.
        query = query.where(Story.section == key.value)
    elif key.kind == "author":
        query = query.where(Story.author_slug == key.value)
    elif key.kind == "tag":
        query = query.join(StoryTag, StoryTag.story_id == Story.id).where(StoryTag.slug == key.value)
    elif key.kind == "label":
        query = query.join(StoryLabel, StoryLabel.story_id == Story.id).where(StoryLabel.label == key.value)
    return query


def list_stories(
    session: Session, key: FeedKey, *, limit: int, before: tuple[datetime, int] | None = None
) -> list[pages.ListStory]:
    """A feed's published stories as lists show them, newest first, from ``before`` on.

    Two indexed queries whatever the depth: the stories' columns by key (not OFFSET), then
    their labels.
    """
    query = in_feed(select(Story.id, Story.slug, Story.headline, Story.published_at), key)
    query = query.where(Story.published_at.is_not(None))
    if before is not None:
        moment, story_id = before
        same_moment = and_(Story.published_at == moment, Story.id < story_id)
        query = query.where(or_(Story.published_at < moment, same_moment))
    rows = session.execute(query.order_by(Story.published_at.desc(), Story.id.desc()).limit(limit)).all()
    labels: dict[int, list[str]] = {row.id: [] for row in rows}
    if rows:
        for story_id, label in session.execute(
            select(StoryLabel.story_id, StoryLabel.label).where(StoryLabel.story_id.in_(list(labels)))
        ):
            labels[story_id].append(label)
    return [pages.ListStory(row.id, row.slug, row.headline, row.published_at, labels[row.id]) for row in rows]


def _older_link(path: str, stories: Sequence[pages.ListStory], page: int) -> str | None:
    if len(stories) <= pages.PAGE_SIZE or page >= MAX_PAGES:
        return None
    last = stories[pages.PAGE_SIZE - 1]
    return f"{path}?before={page_key((last.published_at, last.id))}&page={page + 1}"


def render_front(
    session: Session, *, settings: Settings, before: tuple[datetime, int] | None = None, page: int = 1
) -> tuple[bytes, bytes]:
    """The front page (or an older page of it), and the pieces of the "More news" list."""
    stories = list_stories(session, FeedKey("all"), limit=pages.PAGE_SIZE + 1, before=before)
    items = pages.pieces(stories[: pages.PAGE_SIZE], settings.tz)
    older = _older_link(FRONT, stories, page)
    body = pages.render_front_page(items, older=older, settings=settings, page=page)
    return body.encode(), pages.pieces_to_json(items[: pages.MORE_NEWS_SIZE + 1])


def list_page_path(key: FeedKey) -> str | None:
    """The page of a feed's stories (tags, authors and sections have one)."""
    if key.kind not in PAGE_KINDS or key.value is None:
        return None
    return pages.list_path(key.kind, key.value)


def render_list(
    session: Session,
    key: FeedKey,
    *,
    settings: Settings,
    before: tuple[datetime, int] | None = None,
    page: int = 1,
) -> bytes | None:
    """The page of a tag, author or section; None when it has no published story."""
    path = list_page_path(key)
    assert path is not None and key.value is not None
    stories = list_stories(session, key, limit=pages.PAGE_SIZE + 1, before=before)
    if not stories:
        return None
    bio = None
    if key.kind == "author":
        # The author as their newest story names and describes them.
        row = session.execute(
            in_feed(select(Story.author_name, Story.author_bio), key)
            .order_by(Story.published_at.desc(), Story.id.desc())
            .limit(1)
        ).first()
        name = (row.author_name if row else None) or key.value
        bio = row.author_bio if row else None
    elif key.kind == "tag":
        name = (
            session.scalar(
                select(StoryTag.name).where(StoryTag.slug == key.value, StoryTag.story_id == stories[0].id)
            )
            or key.value
        )
    else:
        name = pages.section_name(key.value)
    items = pages.pieces(stories[: pages.PAGE_SIZE], settings.tz)
    body = pages.render_list_page(
        key.kind,
        key.value,
        name,
        items,
        bio=bio,
        settings=settings,
        page=page,
        older=_older_link(path, stories, page),
    )
    return body.encode()


def render_story(session: Session, slug: str, *, settings: Settings) -> tuple[int, bytes] | None:
    """A published story's page, with a slot for the "More news" list; None if not published."""
    story = published_stories(session, [slug]).get(slug)
    if story is None:
        return None
    return story.id, pages.render_story_page(story, None, settings=settings).encode()


def published_stories(session: Session, slugs: Sequence[str]) -> dict[str, Story]:
    """The published stories of these slugs, by slug (with their tags and labels)."""
    if not slugs:
        return {}
    query = select(Story).where(Story.slug.in_(list(slugs)), Story.status == "published")
    return {story.slug: story for story in session.scalars(query)}


def story_page(story: Story, *, settings: Settings) -> Rendered:
    """A story's page as stored: its bytes (a slot for "More news") and its id."""
    return pages.render_story_page(story, None, settings=settings).encode(), story.id


def render_sitemap(session: Session, *, settings: Settings, now: datetime | None = None) -> bytes:
    """The Google News sitemap: stories published in the last 48 hours."""
    now = now or utcnow()
    # Rows, not ORM objects: up to a thousand of them at every render, and only these columns
    # are read (by name, as on a story).
    rows = session.execute(
        select(
            Story.id,
            Story.slug,
            Story.headline,
            Story.language,
            Story.published_at,
            Story.first_created,
            Story.created_at,
        )
        .where(Story.status == "published", Story.published_at >= now - SITEMAP_WINDOW)
        .order_by(Story.published_at.desc(), Story.id.desc())
        .limit(1000)
    ).all()
    return render_news_sitemap(cast(Sequence[Story], rows), settings=settings)


# ---------------------------------------------------------------------------------------------
# Storing


def insert_for(dialect: str) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


@functools.cache
def flag_statement(dialect: str, table: Table, key: str) -> Any:
    """Flag a feed's or a page's row (``dirty_at``), inserting it if it is new."""
    statement = insert_for(dialect)(table)
    return statement.on_conflict_do_update(
        index_elements=[key], set_={"dirty_at": statement.excluded.dirty_at}
    )


def etag_of(body: bytes) -> str:
    """A strong ETag of a page's bytes."""
    return f'"{hashlib.sha256(body).hexdigest()[:40]}"'


def store_pages(session: Session, rendered: dict[str, Rendered], *, snapshot: datetime) -> list[str]:
    """Store pages rendered from a read at ``snapshot`` (a body of None: gone); return those
    that changed. A page stored from a later read is never replaced by this one, and its
    Last-Modified never goes back."""
    if not rendered:
        return []
    now = utcnow().replace(microsecond=0)
    columns = (Page.path, Page.etag, Page.last_modified, Page.rendered_at)
    stored = {
        row.path: row
        for row in session.execute(select(*columns).where(Page.path.in_(sorted(rendered))).with_for_update())
    }
    changed = []
    # Updates of stored pages, sent together (one round trip with psycopg's pipeline).
    updates: list[dict[str, Any]] = []
    still_current: list[dict[str, Any]] = []
    for path in sorted(rendered):
        body, story_id = rendered[path]
        row = stored.get(path)
        etag = etag_of(body) if body is not None else None
        if row is not None and row.rendered_at is not None and row.rendered_at > snapshot:
            continue
        if row is not None and row.rendered_at is not None and row.etag == etag:
            # The same bytes: only note now and then that they are still current (the
            # sitemap, whose stories age out of it, is rendered again on reading otherwise).
            if snapshot - row.rendered_at > STILL_CURRENT:
                still_current.append({"page_path": path, "rendered_at": snapshot})
            continue
        last_modified = now
        if row is not None and row.last_modified is not None and last_modified <= row.last_modified:
            last_modified = row.last_modified + timedelta(seconds=1)
        values = {
            "body": body,
            "etag": etag,
            "last_modified": last_modified,
            "rendered_at": snapshot,
            "story_id": story_id,
        }
        if row is None:
            # A page first stored by two renders at once (a round and a reader's request):
            # the later read wins.
            statement = _first_store_statement(session.get_bind().dialect.name)
            session.connection().execute(statement, {"path": path, **values})
        else:
            updates.append({"page_path": path, **values})
        changed.append(path)
    table = Page.metadata.tables[Page.__tablename__]
    for batch in (updates, still_current):
        if batch:
            statement = update(table).where(table.c.path == bindparam("page_path"))
            session.connection().execute(statement, batch)
    return changed


def flag_pages(session: Session, paths: Iterable[str]) -> None:
    """Mark pages for the next render round (story pages and the sitemap)."""
    names = sorted(set(paths))
    if not names:
        return
    now = utcnow()
    session.flush()  # the changes that call for the flags go first, as they always have
    statement = flag_statement(session.get_bind().dialect.name, PAGES, "path")
    session.connection().execute(statement, [{"path": path, "dirty_at": now} for path in names])


# Upserts are built once per dialect, with every value a parameter: an ON CONFLICT clause
# that holds values is compiled anew at each execution (SQLAlchemy cannot cache it).
PAGES = cast(Table, Page.__table__)


@functools.cache
def _first_store_statement(dialect: str) -> Any:
    statement = insert_for(dialect)(PAGES)
    new = statement.excluded
    columns = ("body", "etag", "last_modified", "rendered_at", "story_id")
    return statement.on_conflict_do_update(
        index_elements=["path"],
        set_={column: new[column] for column in columns},
        where=or_(PAGES.c.rendered_at.is_(None), PAGES.c.rendered_at <= new.rendered_at),
    )


def dirty_pages(session: Session, *, limit: int) -> list[tuple[str, datetime, datetime | None]]:
    """Pages waiting for a round: (path, dirty mark, last render), the oldest marks first."""
    rows = session.execute(
        select(Page.path, Page.dirty_at, Page.rendered_at)
        .where(Page.dirty_at.is_not(None))
        .order_by(Page.dirty_at)
        .limit(limit)
    )
    return [(path, mark, last) for path, mark, last in rows if mark is not None]


def clear_flags(session: Session, seen: Iterable[tuple[str, datetime]]) -> None:
    """Clear the flags these renders answered, unless a change marked a page again meanwhile."""
    marks = [{"flagged_path": path, "mark": mark} for path, mark in seen]
    if marks:
        table = Page.metadata.tables[Page.__tablename__]
        matches = (table.c.path == bindparam("flagged_path"), table.c.dirty_at == bindparam("mark"))
        session.connection().execute(update(table).where(*matches).values(dirty_at=None), marks)


def stored_page(session: Session, path: str) -> StoredPage | None:
    """A page as last stored, if it was (and is not waiting for its first render)."""
    page = session.get(Page, path)
    if page is None or (page.body is None and page.rendered_at is None):
        return None
    body = None if page.body is None else bytes(page.body)
    return StoredPage(page.path, body, page.etag, page.last_modified, page.story_id, page.rendered_at)


def forget_pages(session: Session, paths: Iterable[str]) -> None:
    """Drop stored pages (a list's page when its feed name no longer parses)."""
    session.execute(delete(Page).where(Page.path.in_(list(paths))))
