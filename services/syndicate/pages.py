"""Reader-facing HTML, rendered from stories like the feeds: the front page, story pages,
the pages of a tag, an author and a section, and the "More news" list they share.

Pages are another rendering of the published stories, beside RSS, Atom and JSON Feed: the
render rounds in ``site.py`` call these functions and store the bytes, and ``api.py`` serves
them. Nothing here reads the database.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import cache
from importlib.resources import files
from typing import Any, Protocol
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from shared.config import Settings
from shared.models import Story
from shared.ninjs import rfc3339
from shared.timefmt import date_line, day_header, label_display, local, primary_label, sorted_labels, time_hm

# Stories on the front page and on each page of a tag, author or section.
PAGE_SIZE = 50
# Stories in the "More news" list below a story.
MORE_NEWS_SIZE = 20
# Where a story page's "More news" list goes: the list is stored once for every story page
# and put in when the page is served (the article is the last thing before it that comes
# from the wire, and wire text never holds a comment: it is escaped or sanitised).
MORE_NEWS_SLOT = b"<!--more-news-->"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src * data:; style-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}

# The kinds of list page, by the feed kind they show: URL prefix and the list's heading.
LIST_PATHS = {"tag": "/tags/", "author": "/authors/", "section": "/sections/"}
LIST_HEADINGS = {"tag": "Stories tagged", "author": "Stories by", "section": "Latest in"}

env = Environment(
    loader=PackageLoader("services.syndicate", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@cache
def stylesheet() -> bytes:
    """The site's stylesheet."""
    return files("services.syndicate").joinpath("static/site.css").read_bytes()


@cache
def stylesheet_href() -> str:
    """The stylesheet's URL; a content hash in it lets browsers keep the file for a year."""
    return f"/static/site.css?v={hashlib.sha256(stylesheet()).hexdigest()[:12]}"


def story_path(slug: str) -> str:
    """The site-relative URL of a story."""
    return f"/stories/{quote(slug, safe='')}"


def list_path(kind: str, slug: str) -> str:
    """The site-relative URL of the page of a tag, author or section."""
    return f"{LIST_PATHS[kind]}{quote(slug, safe='')}"


def _web_url(url: str | None) -> str | None:
    # Wire URLs end up in href/src; only http(s) ones are ever emitted.
    if url and re.match(r"https?://", url.strip(), re.IGNORECASE):
        return url.strip()
    return None


def _css_token(label: str) -> str:
    return re.sub(r"[^a-z0-9-]", "", label.lower()) or "other"


class Listed(Protocol):
    """What a "More news" list shows of a story."""

    @property
    def id(self) -> int: ...
    @property
    def slug(self) -> str: ...
    @property
    def headline(self) -> str: ...
    @property
    def published_at(self) -> datetime | None: ...
    @property
    def label_names(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ListStory:
    """A story as a list shows it, read as columns."""

    id: int
    slug: str
    headline: str
    published_at: datetime
    label_names: list[str]


@dataclass(frozen=True, slots=True)
class ListItem:
    """One story in a "More news" list."""

    time: str
    iso: str
    label: str | None
    label_class: str | None
    headline: str
    href: str


@dataclass(frozen=True, slots=True)
class Piece:
    """One story of a list, rendered: its local day, that day's header and its line."""

    story_id: int
    day: str
    header: str
    line: str


# A story's line in a list is the same on every page until the story changes, and each
# render of a list differs from the last by a story or two: keep the lines rendered.
_PIECES: OrderedDict[tuple[Any, ...], Piece] = OrderedDict()
_PIECES_MAX = 4096
_PIECES_LOCK = threading.Lock()


def pieces(stories: Iterable[Listed], tz: tzinfo) -> list[Piece]:
    """Stories (newest first) rendered one by one, for ``more_news`` to put together."""
    rendered = []
    for story in stories:
        if story.published_at is None:
            continue
        key = (story.id, story.slug, story.headline, story.published_at, tuple(story.label_names), str(tz))
        with _PIECES_LOCK:
            piece = _PIECES.get(key)
            if piece is not None:
                _PIECES.move_to_end(key)
        if piece is None:
            piece = _piece(story, story.published_at, tz)
            with _PIECES_LOCK:
                _PIECES[key] = piece
                if len(_PIECES) > _PIECES_MAX:
                    _PIECES.popitem(last=False)
        rendered.append(piece)
    return rendered


def _piece(story: Listed, published_at: datetime, tz: tzinfo) -> Piece:
    macros = env.get_template("macros.html").module
    wall = local(published_at, tz)
    label = primary_label(story.label_names)
    item = ListItem(
        time=time_hm(published_at, tz),
        iso=wall.isoformat(),
        label=label_display(label) if label else None,
        label_class=_css_token(label) if label else None,
        headline=story.headline,
        href=story_path(story.slug),
    )
    year_weekday, day_month = day_header(published_at, tz)
    return Piece(
        story.id,
        wall.date().isoformat(),
        str(macros.day_header(year_weekday, day_month)),  # type: ignore[attr-defined]
        str(macros.news_item(item)),  # type: ignore[attr-defined]
    )


def more_news(
    items: Sequence[Piece],
    *,
    heading: str = "More news",
    exclude: int | None = None,
    limit: int | None = None,
) -> Markup:
    """The seed's "More news" list: a header per local day, then each story's time, label
    and headline; without the story ``exclude`` and up to ``limit`` stories."""
    parts = [
        '<section class="more-news" aria-labelledby="more-news-heading">\n'
        f'<h2 id="more-news-heading" class="section-title">{Markup.escape(heading)}</h2>\n'
    ]
    day = None
    shown = 0
    for piece in items:
        if piece.story_id == exclude:
            continue
        if limit is not None and shown >= limit:
            break
        if piece.day != day:
            if day is not None:
                parts.append("</ol>\n</div>\n")
            parts.append(f'<div class="day">\n{piece.header}<ol class="news-list">\n')
            day = piece.day
        parts.append(piece.line)
        shown += 1
    parts.append("</ol>\n</div>\n" if day is not None else '<p class="empty">No stories yet.</p>\n')
    parts.append("</section>\n")
    # The pieces were rendered (and escaped) by the templates; the heading is escaped above.
    return Markup("".join(parts))  # noqa: S704


def pieces_to_json(items: Sequence[Piece]) -> bytes:
    """Pieces as stored between renders."""
    return json.dumps([[p.story_id, p.day, p.header, p.line] for p in items], ensure_ascii=False).encode()


def pieces_from_json(body: bytes) -> list[Piece]:
    """Pieces as ``pieces_to_json`` stored them."""
    return [Piece(int(row[0]), str(row[1]), str(row[2]), str(row[3])) for row in json.loads(body)]


def _moment(dt: datetime | None, tz: tzinfo) -> dict[str, str] | None:
    if dt is None:
        return None
    return {"date": date_line(dt, tz), "time": time_hm(dt, tz), "iso": local(dt, tz).isoformat()}


FEED_TYPES = (
    ("rss", "application/rss+xml", "RSS"),
    ("atom", "application/atom+xml", "Atom"),
    ("json", "application/feed+json", "JSON Feed"),
)


def feed_links(name: str, title: str) -> list[dict[str, str]]:
    """The ``<link rel="alternate">`` of a feed (``all``, ``tag/kyiv`` …) in every format."""
    path = quote(name, safe="/")
    return [
        {"href": f"/feeds/{path}.{ext}", "type": mime, "title": f"{title} ({kind})"}
        for ext, mime, kind in FEED_TYPES
    ]


def _base_context(settings: Settings, *, feeds: list[dict[str, str]]) -> dict[str, Any]:
    return {"site_title": settings.site_title, "stylesheet": stylesheet_href(), "feeds": feeds, "lang": "en"}


def _all_feeds(settings: Settings) -> list[dict[str, str]]:
    return feed_links("all", f"{settings.site_title}: all stories")


def render_front_page(items: Sequence[Piece], *, older: str | None, settings: Settings, page: int = 1) -> str:
    """The front page: published stories, newest first, grouped by local day."""
    return env.get_template("list.html").render(
        **_base_context(settings, feeds=_all_feeds(settings)),
        title=settings.site_title if page == 1 else f"{settings.site_title} — page {page}",
        canonical=f"{settings.site_url}/" if page == 1 else None,
        heading=None,
        about=None,
        more_news=more_news(items),
        latest="/" if page > 1 else None,
        older=older,
    )


def render_list_page(
    kind: str,
    slug: str,
    name: str,
    items: Sequence[Piece],
    *,
    bio: str | None,
    older: str | None,
    settings: Settings,
    page: int = 1,
) -> str:
    """The page of a tag, an author (with their bio) or a section: its stories, newest first."""
    path = list_path(kind, slug)
    title = name if page == 1 else f"{name} — page {page}"
    return env.get_template("list.html").render(
        **_base_context(settings, feeds=feed_links(f"{kind}/{slug}", f"{settings.site_title}: {name}")),
        title=f"{title} — {settings.site_title}",
        canonical=f"{settings.site_url}{path}" if page == 1 else None,
        heading=name,
        kind=kind,
        about=bio,
        more_news=more_news(items, heading=f"{LIST_HEADINGS[kind]} {name}"),
        latest=path if page > 1 else None,
        older=older,
    )


def section_name(slug: str) -> str:
    """How a section is named on its page (sections are stored as slugs)."""
    return slug.replace("-", " ").capitalize()


def _json_ld(data: dict[str, Any]) -> Markup:
    """JSON for a ``<script type="application/ld+json">``: markup characters escaped, so that
    no wire text can end the script element (``</script>``) or open a comment in it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return Markup(text)  # noqa: S704  # JSON with every markup character escaped above


def news_article(story: Story, *, picture_url: str | None, settings: Settings) -> dict[str, Any]:
    """The story as schema.org ``NewsArticle``, as news search engines read it."""
    published = story.published_at or story.created_at or datetime.now(UTC)
    url = f"{settings.site_url}{story_path(story.slug)}"
    article: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "NewsArticle",
        "mainEntityOfPage": url,
        "url": url,
        "headline": story.headline,
        "datePublished": rfc3339(published),
        "dateModified": rfc3339(max(story.updated_at or published, published)),
    }
    publisher = {"@type": "Organization", "name": settings.site_title, "url": f"{settings.site_url}/"}
    if story.author_name and story.author_slug:
        author_url = f"{settings.site_url}{list_path('author', story.author_slug)}"
        article["author"] = [{"@type": "Person", "name": story.author_name, "url": author_url}]
    elif story.byline:
        article["author"] = [{"@type": "Person", "name": story.byline}]
    else:
        article["author"] = [publisher]
    if picture_url:
        article["image"] = [picture_url]
    if story.lede:
        article["description"] = story.lede
    if story.section:
        article["articleSection"] = section_name(story.section)
    if story.tags:
        article["keywords"] = [tag.name for tag in story.tags]
    if story.language:
        article["inLanguage"] = story.language
    article["publisher"] = publisher
    return article


def render_story_page(story: Story, more: Sequence[Piece] | None, *, settings: Settings) -> str:
    """A story page; with ``more`` None, the "More news" list is left to ``MORE_NEWS_SLOT``."""
    tz = settings.tz
    picture = story.picture or {}
    picture_url = _web_url(picture.get("url"))
    feeds = _all_feeds(settings)
    if story.section:
        section = section_name(story.section)
        feeds += feed_links(f"section/{story.section}", f"{settings.site_title}: {section}")
    if story.author_slug and story.author_name:
        feeds += feed_links(f"author/{story.author_slug}", f"{settings.site_title}: {story.author_name}")
    return env.get_template("story.html").render(
        **_base_context(settings, feeds=feeds),
        title=f"{story.headline} — {settings.site_title}",
        canonical=f"{settings.site_url}{story_path(story.slug)}",
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
        author_href=list_path("author", story.author_slug) if story.author_slug else None,
        tags=[(tag.name, list_path("tag", tag.slug)) for tag in story.tags if tag.slug],
        json_ld=_json_ld(news_article(story, picture_url=picture_url, settings=settings)),
        more_news=(
            Markup(MORE_NEWS_SLOT.decode())  # noqa: S704  # a constant
            if more is None
            else more_news(more, exclude=story.id, limit=MORE_NEWS_SIZE)
        ),
    )


def fill_story_page(body: bytes, more: Sequence[Piece], story_id: int) -> bytes:
    """A stored story page with its "More news" list put in its slot."""
    head, slot, tail = body.rpartition(MORE_NEWS_SLOT)
    if not slot:
        return body
    return head + more_news(more, exclude=story_id, limit=MORE_NEWS_SIZE).encode() + tail


def render_not_found(*, settings: Settings) -> str:
    """The page for a story or page that does not exist (or is not published)."""
    return env.get_template("not_found.html").render(
        **_base_context(settings, feeds=_all_feeds(settings)),
        title=f"Not found — {settings.site_title}",
        canonical=None,
    )


def render_bad_request(reason: str, *, settings: Settings) -> str:
    """The page for a malformed address (an ``Older`` link that was not ours)."""
    return env.get_template("not_found.html").render(
        **_base_context(settings, feeds=_all_feeds(settings)),
        title=f"Bad request — {settings.site_title}",
        canonical=None,
        reason=reason,
    )
