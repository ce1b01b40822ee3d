"""Reader-facing HTML: the front page and story pages, rendered from published stories."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import cache
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only, raiseload, selectinload

from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.models import Story
from shared.timefmt import (
    date_line,
    day_header,
    label_display,
    local,
    primary_label,
    sorted_labels,
    time_hm,
)

PAGE_SIZE = 50
MORE_NEWS_SIZE = 20
MAX_PAGE = 10_000

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src * data:; style-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}

env = Environment(
    loader=PackageLoader("services.publish", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

router = APIRouter()


@cache
def _stylesheet() -> bytes:
    return files("services.publish").joinpath("static/site.css").read_bytes()


@cache
def _stylesheet_href() -> str:
    # A content hash in the URL lets browsers keep the file for a year yet see every change.
    return f"/static/site.css?v={hashlib.sha256(_stylesheet()).hexdigest()[:12]}"


def story_path(slug: str) -> str:
    """The site-relative URL of a story."""
    return f"/stories/{quote(slug, safe='')}"


def _web_url(url: str | None) -> str | None:
    # Wire URLs end up in href/src; only http(s) ones are ever emitted.
    if url and re.match(r"https?://", url.strip(), re.IGNORECASE):
        return url.strip()
    return None


def _css_token(label: str) -> str:
    return re.sub(r"[^a-z0-9-]", "", label.lower()) or "other"


@dataclass(frozen=True)
class ListItem:
    """One story in a "More news" list."""

    time: str
    iso: str
    label: str | None
    label_class: str | None
    headline: str
    href: str


@dataclass(frozen=True)
class DayGroup:
    """A local day's header and its stories, newest first."""

    year_weekday: str
    day_month: str
    items: list[ListItem] = field(default_factory=list)


def group_by_day(stories: Iterable[Story], tz: tzinfo) -> list[DayGroup]:
    """Stories (already newest first) grouped by their local publication day."""
    groups: list[DayGroup] = []
    current_day = None
    for story in stories:
        if story.published_at is None:
            continue
        wall = local(story.published_at, tz)
        if wall.date() != current_day:
            current_day = wall.date()
            groups.append(DayGroup(*day_header(story.published_at, tz)))
        label = primary_label(story.label_names)
        groups[-1].items.append(
            ListItem(
                time=time_hm(story.published_at, tz),
                iso=wall.isoformat(),
                label=label_display(label) if label else None,
                label_class=_css_token(label) if label else None,
                headline=story.headline,
                href=story_path(story.slug),
            )
        )
    return groups


def _moment(dt: datetime | None, tz: tzinfo) -> dict[str, str] | None:
    if dt is None:
        return None
    return {"date": date_line(dt, tz), "time": time_hm(dt, tz), "iso": local(dt, tz).isoformat()}


def _feeds(section: str | None) -> list[dict[str, str]]:
    kinds = (
        ("rss", "application/rss+xml", "RSS"),
        ("atom", "application/atom+xml", "Atom"),
        ("json", "application/feed+json", "JSON Feed"),
    )
    feeds = [
        {"href": f"/feeds/all.{ext}", "type": mime, "title": f"All stories ({name})"}
        for ext, mime, name in kinds
    ]
    if section:
        key = quote(section, safe="")
        feeds += [
            {"href": f"/feeds/section/{key}.{ext}", "type": mime, "title": f"{section} ({name})"}
            for ext, mime, name in kinds
        ]
    return feeds


def _base_context(settings: Settings) -> dict[str, Any]:
    return {"site_title": settings.site_title, "stylesheet": _stylesheet_href()}


def render_front_page(stories: Sequence[Story], *, page: int, has_next: bool, settings: Settings) -> str:
    """The front page: published stories, newest first, grouped by local day."""
    query = "" if page == 1 else f"?page={page}"
    newer = None if page == 1 else ("/" if page == 2 else f"/?page={page - 1}")
    return env.get_template("front.html").render(
        **_base_context(settings),
        title=settings.site_title if page == 1 else f"{settings.site_title} — page {page}",
        canonical=f"{settings.site_url}/{query}",
        feeds=_feeds(None),
        lang="en",
        days=group_by_day(stories, settings.tz),
        page=page,
        newer=newer,
        older=f"/?page={page + 1}" if has_next else None,
    )


def render_story_page(story: Story, more: Sequence[Story], *, settings: Settings) -> str:
    """A story page, with the latest other stories below it."""
    tz = settings.tz
    picture = story.picture or {}
    picture_url = _web_url(picture.get("url"))
    return env.get_template("story.html").render(
        **_base_context(settings),
        title=f"{story.headline} — {settings.site_title}",
        canonical=f"{settings.site_url}{story_path(story.slug)}",
        feeds=_feeds(story.section),
        lang="en",
        story=story,
        article_lang=story.language,
        labels=[(label_display(name), _css_token(name)) for name in sorted_labels(story.label_names)],
        published=_moment(story.published_at, tz),
        updated=_moment(story.updated_at, tz),
        picture=(
            {
                "url": picture_url,
                "caption": picture.get("caption") or None,
                "credit": picture.get("credit") or None,
                "width": picture.get("width") if isinstance(picture.get("width"), int) else None,
                "height": picture.get("height") if isinstance(picture.get("height"), int) else None,
            }
            if picture_url
            else None
        ),
        source_url=_web_url(story.source_url),
        tags=[tag.name for tag in story.tags],
        days=group_by_day(more, tz),
    )


def render_not_found(*, settings: Settings) -> str:
    """The page for a story or page that does not exist (or is not published)."""
    return env.get_template("not_found.html").render(
        **_base_context(settings),
        title=f"Not found — {settings.site_title}",
        canonical=None,
        feeds=_feeds(None),
        lang="en",
    )


def _html(body: str, status_code: int = 200) -> Response:
    return Response(
        body,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers=SECURITY_HEADERS,
    )


def _published(
    session: Session, *, limit: int, offset: int = 0, exclude_id: int | None = None
) -> list[Story]:
    """Published stories, newest first, with only what a list shows loaded."""
    query = (
        select(Story)
        .where(Story.status == "published", Story.published_at.is_not(None))
        .order_by(Story.published_at.desc(), Story.id.desc())
        # Lists need these columns and the labels; touching anything else is a bug to
        # surface, not an N+1 lazy load.
        .options(
            load_only(Story.id, Story.slug, Story.headline, Story.published_at, raiseload=True),
            selectinload(Story.labels),
            raiseload(Story.tags),
        )
        .limit(limit)
        .offset(offset)
    )
    if exclude_id is not None:
        query = query.where(Story.id != exclude_id)
    return list(session.scalars(query))


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def front_page(page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1) -> Response:
    """GET /: the latest published stories, 50 a page."""
    settings = get_settings()
    with session_scope(read_only=True) as session:
        stories = _published(session, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        if page > 1 and not stories:
            return _html(render_not_found(settings=settings), 404)
        # Rendered inside the session: the read-only rollback expires the loaded rows.
        body = render_front_page(
            stories[:PAGE_SIZE], page=page, has_next=len(stories) > PAGE_SIZE, settings=settings
        )
    return _html(body)


@router.api_route("/stories/{slug}", methods=["GET", "HEAD"], include_in_schema=False)
def story_page(slug: str) -> Response:
    """GET /stories/{slug}: a published story, else 404."""
    settings = get_settings()
    with session_scope(read_only=True) as session:
        story = session.scalars(
            select(Story).where(Story.slug == slug, Story.status == "published")
        ).one_or_none()
        if story is None:
            return _html(render_not_found(settings=settings), 404)
        more = _published(session, limit=MORE_NEWS_SIZE, exclude_id=story.id)
        body = render_story_page(story, more, settings=settings)
    return _html(body)


@router.get("/static/site.css", include_in_schema=False)
def stylesheet(v: str | None = None) -> Response:
    """The site's stylesheet (the only one the CSP allows)."""
    # Only the hashed URL the pages link to may be cached for good; a bare one may change.
    versioned = v is not None and _stylesheet_href().endswith(f"?v={v}")
    return Response(
        _stylesheet(),
        media_type="text/css; charset=utf-8",
        headers={
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
        },
    )
