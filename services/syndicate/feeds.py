"""Rendering feeds (RSS 2.0, Atom 1.0, JSON Feed 1.1) and the news sitemap from stories."""

from __future__ import annotations

import copy
import functools
import hashlib
import html
import json
import mimetypes
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import quote, urljoin

from feedgen.entry import FeedEntry
from feedgen.feed import FeedGenerator
from lxml import etree  # type: ignore[import-untyped]
from sqlalchemy import inspect as sa_inspect

from shared.config import Settings
from shared.models import Story
from shared.ninjs import rfc3339, story_url
from shared.stories import LABELS as LABELS  # re-exported: the feed modules name it from here
from shared.text import slugify

FeedKind = Literal["all", "section", "tag", "author", "label"]
FeedFormat = Literal["rss", "atom", "json"]

FEED_KINDS: tuple[str, ...] = get_args(FeedKind)
FEED_FORMATS: tuple[str, ...] = get_args(FeedFormat)
MEDIA_TYPES: dict[str, str] = {
    "rss": "application/rss+xml; charset=utf-8",
    "atom": "application/atom+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
}
JSONFEED_VERSION = "https://jsonfeed.org/version/1.1"
ATOM_NS = "http://www.w3.org/2005/Atom"
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
NEWS_NS = "http://www.google.com/schemas/sitemap-news/0.9"
# Google reads at most this many URLs from one news sitemap.
SITEMAP_LIMIT = 1000
# An empty feed still needs an `updated`; a fixed date keeps its bytes stable.
EMPTY_FEED_UPDATED = datetime(2000, 1, 1, tzinfo=UTC)
SUMMARY_CHARS = 280

_SLUG = re.compile(r"[^\W_]+(?:[-_][^\W_]+)*")
# Characters XML 1.0 forbids, plus C1 controls, which validators flag as mis-decoded text.
_NOT_XML = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SPACES = re.compile(r"\s+")
# feedgen writes RSS dates by switching the process-wide locale to C and back; two threads
# doing that at once can leave it switched (or format under the wrong one), so RSS documents
# are serialised one at a time per process. The switch happens only inside rss_str().
_RSS_LOCALE_LOCK = threading.Lock()
# Sections are few and slugify is slow next to the rest of a render.
section_slug = functools.lru_cache(maxsize=1024)(slugify)


@dataclass(frozen=True, slots=True)
class FeedKey:
    """Which feed: everything, or the stories of one section, tag, author or label."""

    kind: FeedKind
    value: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FEED_KINDS:
            raise ValueError(f"unknown feed kind {self.kind!r}")
        if (self.kind == "all") != (self.value is None):
            raise ValueError(f"feed kind {self.kind!r} with value {self.value!r}")
        if self.kind == "label" and self.value not in LABELS:
            raise ValueError(f"unknown label {self.value!r}")

    @property
    def name(self) -> str:
        """The feed's name as in its URL: ``all``, ``section/world`` …"""
        return "all" if self.value is None else f"{self.kind}/{self.value}"


@dataclass(frozen=True, slots=True)
class RenderedFeed:
    """One feed document, ready to store and serve."""

    body: bytes
    etag: str
    last_modified: datetime
    media_type: str


def parse_feed_name(name: str) -> FeedKey | None:
    """The feed a name like ``tag/kyiv`` means, or None when it names none."""
    if name == "all":
        return FeedKey("all")
    kind, sep, value = name.partition("/")
    if not sep or kind not in FEED_KINDS or kind == "all":
        return None
    if kind == "label":
        return FeedKey("label", value) if value in LABELS else None
    # Only the canonical spelling, so that one feed has one URL and one cache entry.
    if value != value.lower() or not _SLUG.fullmatch(value):
        return None
    return FeedKey(kind, value)  # type: ignore[arg-type]  # kind checked against FEED_KINDS


def feed_keys_for(story: Story) -> list[FeedKey]:
    """Every feed the story appears in."""
    keys = [FeedKey("all")]
    if story.section and (section := section_slug(story.section)):
        keys.append(FeedKey("section", section))
    keys.extend(FeedKey("tag", tag.slug) for tag in story.tags if tag.slug)
    if story.author_slug:
        keys.append(FeedKey("author", story.author_slug))
    keys.extend(FeedKey("label", label) for label in story.label_names if label in LABELS)
    return list(dict.fromkeys(keys))


def feed_url(key: FeedKey, fmt: FeedFormat, *, settings: Settings) -> str:
    """The public URL of a feed in one format."""
    return f"{settings.site_url}/feeds/{quote(key.name, safe='/')}.{fmt}"


def render_feed(
    key: FeedKey, fmt: FeedFormat, stories: Sequence[Story], *, settings: Settings
) -> RenderedFeed:
    """The feed document for these stories (newest first); identical input, identical bytes."""
    items = [_cached_item(story, settings) for story in stories[: settings.feed_size]]
    return render_items(key, fmt, items, settings=settings)


def render_items(key: FeedKey, fmt: FeedFormat, items: Sequence[Item], *, settings: Settings) -> RenderedFeed:
    """The feed document for these entries (newest first, from ``feed_items``)."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown feed format {fmt!r}")
    items = items[: settings.feed_size]
    channel = _channel(key, fmt, items, settings)
    body = _json_feed(channel, items) if fmt == "json" else _xml_feed(channel, fmt, items)
    return RenderedFeed(
        body=body,
        etag=f'"{hashlib.sha256(body).hexdigest()}"',
        # HTTP dates carry whole seconds.
        last_modified=channel.updated.replace(microsecond=0),
        media_type=MEDIA_TYPES[fmt],
    )


def render_news_sitemap(stories: Sequence[Story], *, settings: Settings) -> bytes:
    """A Google News sitemap of the given stories (the caller picks the last 48 hours)."""
    root = etree.Element(f"{{{SITEMAP_NS}}}urlset", nsmap={None: SITEMAP_NS, "news": NEWS_NS})
    for story in stories[:SITEMAP_LIMIT]:
        published = _published(story)
        url = etree.SubElement(root, f"{{{SITEMAP_NS}}}url")
        etree.SubElement(url, f"{{{SITEMAP_NS}}}loc").text = story_url(story, settings)
        news = etree.SubElement(url, f"{{{NEWS_NS}}}news")
        publication = etree.SubElement(news, f"{{{NEWS_NS}}}publication")
        etree.SubElement(publication, f"{{{NEWS_NS}}}name").text = _xml_text(settings.site_title)
        etree.SubElement(publication, f"{{{NEWS_NS}}}language").text = _news_language(story.language)
        etree.SubElement(news, f"{{{NEWS_NS}}}publication_date").text = rfc3339(published)
        etree.SubElement(news, f"{{{NEWS_NS}}}title").text = _xml_text(story.headline)
    body: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    return body


# ---------------------------------------------------------------------------------------------
# One story, as every format needs it


@dataclass(frozen=True, slots=True)
class _Picture:
    url: str
    media_type: str
    length: int
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class _Category:
    term: str
    label: str
    scheme: str


@dataclass(frozen=True, slots=True)
class Item:
    """A story as every feed format shows it."""

    url: str
    title: str
    summary: str
    content_html: str
    author: str
    author_slug: str | None
    published: datetime
    updated: datetime
    modified: bool
    categories: tuple[_Category, ...]
    tags: tuple[str, ...]
    language: str | None
    picture: _Picture | None
    # Its RSS item and Atom entry elements and its JSON Feed item, built once per item.
    elements: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class _Channel:
    title: str
    description: str
    self_url: str
    home_url: str
    hubs: tuple[str, ...]
    updated: datetime
    site_title: str
    language: str | None


# A story's entry is the same in every feed and format until the story changes, and
# each render of a 50-entry feed differs from the last by a story or two: keep the
# entries built (most of a render's cost) per story revision.
_ITEMS: OrderedDict[tuple[Any, ...], Item] = OrderedDict()
# With its built elements an entry of a 4 KB story holds about 30 KB: 1024 of them cover
# the feeds rendered often (each shows 50) in about 32 MB per process.
_ITEMS_MAX = 1024
_ITEMS_LOCK = threading.Lock()
# The columns whose values say whether a story's entry changed: a feed reads these first
# and loads the whole story only for entries it has not built.
ITEM_KEY_COLUMNS = (
    Story.id,
    Story.revision,
    Story.modified_at,
    Story.published_at,
    Story.updated_at,
    Story.status,
)


def _item_key(values: Sequence[Any], settings: Settings) -> tuple[Any, ...]:
    return (settings.sqlalchemy_url, *values, settings.site_url, settings.site_title)


def _remembered(key: tuple[Any, ...]) -> Item | None:
    with _ITEMS_LOCK:
        item = _ITEMS.get(key)
        if item is not None:
            _ITEMS.move_to_end(key)
        return item


def _remember(key: tuple[Any, ...], item: Item) -> None:
    with _ITEMS_LOCK:
        _ITEMS[key] = item
        if len(_ITEMS) > _ITEMS_MAX:
            _ITEMS.popitem(last=False)


def _cached_item(story: Story, settings: Settings) -> Item:
    if not sa_inspect(story).has_identity:  # not read from the database: nothing to key it by
        return _item(story, settings)
    key = _item_key([getattr(story, column.key) for column in ITEM_KEY_COLUMNS], settings)
    item = _remembered(key)
    if item is None:
        item = _item(story, settings)
        _remember(key, item)
    return item


def feed_items(
    rows: Sequence[Sequence[Any]], load: Callable[[list[int]], Iterable[Story]], *, settings: Settings
) -> list[Item]:
    """The entries for rows of ``ITEM_KEY_COLUMNS`` (in feed order), loading only the stories
    whose entry is not built yet with ``load(ids)``."""
    keys = [_item_key(row, settings) for row in rows]
    items = {key[1]: item for key in keys if (item := _remembered(key)) is not None}
    missing = [key[1] for key in keys if key[1] not in items]
    if missing:
        for story in load(missing):
            items[story.id] = _cached_item(story, settings)
    return [items[key[1]] for key in keys if key[1] in items]


def _item(story: Story, settings: Settings) -> Item:
    published = _published(story)
    # Atom's `updated` keeps fractions of a second, so that an update in the same second as
    # the publish (or an earlier update) still moves it.
    updated = _utc(story.updated_at, whole_seconds=False) if story.updated_at else published
    scheme = f"{settings.site_url}/feeds"
    categories: list[_Category] = []
    if story.section and (section := section_slug(story.section)):
        categories.append(_Category(section, _xml_text(story.section), f"{scheme}/section/"))
    categories.extend(
        _Category(tag.slug, _xml_text(tag.name), f"{scheme}/tag/") for tag in story.tags if tag.slug
    )
    labels = [label for label in story.label_names if label in LABELS]
    categories.extend(_Category(label, label.capitalize(), f"{scheme}/label/") for label in labels)
    tags = [story.section or "", *story.tag_names, *(label.capitalize() for label in labels)]
    return Item(
        url=story_url(story, settings),
        title=_xml_text(story.headline),
        summary=_xml_text(_summary(story)),
        content_html=_xml_text(story.body_html or ""),
        # An Atom entry without an author is invalid, so someone is always named.
        author=_xml_text(story.author_name or story.byline or settings.site_title),
        author_slug=story.author_slug,
        published=published,
        updated=max(updated, published),
        modified=story.updated_at is not None,
        categories=tuple(categories),
        tags=tuple(dict.fromkeys(tag for tag in tags if tag)),
        language=story.language or None,
        picture=_picture(story, settings),
    )


def _channel(key: FeedKey, fmt: FeedFormat, items: Sequence[Item], settings: Settings) -> _Channel:
    subject = _subject_name(key, items)
    title = settings.site_title if subject is None else f"{settings.site_title} — {subject}"
    return _Channel(
        title=_xml_text(title),
        description=_xml_text(f"The latest stories from {title}"),
        self_url=feed_url(key, fmt, settings=settings),
        home_url=f"{settings.site_url}/",
        hubs=tuple(settings.hubs),
        updated=max((item.updated for item in items), default=EMPTY_FEED_UPDATED),
        site_title=_xml_text(settings.site_title),
        language=_common_language(items),
    )


def _common_language(items: Sequence[Item]) -> str | None:
    """The feed's language when all its stories share one (RSS readers ask for it)."""
    languages = {item.language for item in items}
    if len(languages) != 1:
        return None
    (language,) = languages
    if language is None or not re.fullmatch(r"[A-Za-z]{2}(?:-[A-Za-z0-9]{1,8})*", language):
        return None
    return language


def _subject_name(key: FeedKey, items: Sequence[Item]) -> str | None:
    """How the feed's section, tag, author or label is written, as its stories write it."""
    if key.value is None:
        return None
    if key.kind == "label":
        return key.value.capitalize()
    scheme_end = {"section": "/section/", "tag": "/tag/"}.get(key.kind)
    for item in items:
        for category in item.categories:
            if scheme_end and category.scheme.endswith(scheme_end) and category.term == key.value:
                return category.label
        if key.kind == "author" and item.author_slug == key.value:
            return item.author
    return key.value.replace("-", " ").title()


def _published(story: Story) -> datetime:
    moment = story.published_at or story.first_created or story.created_at
    return EMPTY_FEED_UPDATED if moment is None else _utc(moment)


def _utc(moment: datetime, *, whole_seconds: bool = True) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=0) if whole_seconds else moment


def _summary(story: Story) -> str:
    text = _SPACES.sub(" ", story.lede or "").strip()
    if text:
        return text
    text = _SPACES.sub(" ", story.body_text or "").strip()
    if len(text) <= SUMMARY_CHARS:
        return text
    cut = text[:SUMMARY_CHARS]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-—") + "…"


def _picture(story: Story, settings: Settings) -> _Picture | None:
    picture = story.picture or {}
    if not picture.get("url"):
        return None
    url = _absolute(str(picture["url"]), settings)
    media_type = picture.get("media_type") or mimetypes.guess_type(url)[0]
    return _Picture(
        url=url,
        media_type=str(media_type or "application/octet-stream"),
        # RSS requires a length and says 0 when it is unknown.
        length=_positive(picture.get("size")) or 0,
        width=_positive(picture.get("width")),
        height=_positive(picture.get("height")),
    )


def _absolute(url: str, settings: Settings) -> str:
    if url.startswith(("https://", "http://")):
        return url
    return urljoin(f"{settings.site_url}/", url)


def _positive(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("", text)


def _news_language(language: str | None) -> str:
    # Google wants an ISO 639 code; "und" (undetermined) is one, for stories that name none.
    primary = (language or "").split("-")[0].split("_")[0].lower()
    return primary if primary.isalpha() and 2 <= len(primary) <= 3 else "und"


# ---------------------------------------------------------------------------------------------
# JSON Feed 1.1


def _json_feed(channel: _Channel, items: Sequence[Item]) -> bytes:
    document: dict[str, Any] = {
        "version": JSONFEED_VERSION,
        "title": channel.title,
        "home_page_url": channel.home_url,
        "feed_url": channel.self_url,
        "description": channel.description,
    }
    if channel.language:
        document["language"] = channel.language
    if channel.hubs:
        document["hubs"] = [{"type": "WebSub", "url": hub} for hub in channel.hubs]
    # Each item is encoded once and kept with it; "items" is the document's last member.
    head = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    entries = ",".join(_json_entry(item) for item in items)
    return f'{head[:-1]},"items":[{entries}]}}'.encode()


def _json_entry(item: Item) -> str:
    encoded = item.elements.get("json")
    if encoded is None:
        encoded = json.dumps(_json_item(item), ensure_ascii=False, separators=(",", ":"))
        item.elements["json"] = encoded
    return str(encoded)


def _json_item(item: Item) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": item.url,
        "url": item.url,
        "title": item.title,
        "content_html": item.content_html,
    }
    if item.summary:
        entry["summary"] = item.summary
    if item.picture:
        entry["image"] = item.picture.url
    entry["date_published"] = rfc3339(item.published)
    if item.modified:
        entry["date_modified"] = rfc3339(item.updated)
    entry["authors"] = [{"name": item.author}]
    if item.tags:
        entry["tags"] = list(item.tags)
    if item.language:
        entry["language"] = item.language
    return entry


# ---------------------------------------------------------------------------------------------
# RSS 2.0 and Atom 1.0, with feedgen


class _Entry(FeedEntry):  # type: ignore[misc]  # feedgen is untyped
    """A feedgen entry whose Atom links keep their rel, type and length.

    feedgen 1.0.0 writes only the href of an Atom entry's links (its issue #135), which turns
    the enclosure into a second alternate link; the attributes are put back here.
    """

    def atom_entry(self, extensions: bool = True) -> Any:
        element = super().atom_entry(extensions=extensions)
        written = [child for child in element if child.tag == "link"]
        for link_element, link in zip(written, self.link() or [], strict=False):
            for attribute in ("rel", "type", "hreflang", "title", "length"):
                if link.get(attribute):
                    link_element.set(attribute, link[attribute])
        return element


class _RssHubLinks:
    """A feedgen extension adding WebSub hub links to an RSS channel (feedgen writes only self)."""

    def __init__(self, hubs: Sequence[str]) -> None:
        self._hubs = tuple(hubs)

    def extend_ns(self) -> dict[str, str]:
        return {}

    def extend_rss(self, rss: Any) -> Any:
        channel = rss[0]
        for hub in self._hubs:
            etree.SubElement(channel, f"{{{ATOM_NS}}}link", href=hub, rel="hub")
        return rss

    def extend_atom(self, feed: Any) -> Any:
        return feed


def _xml_feed(channel: _Channel, fmt: FeedFormat, items: Sequence[Item]) -> bytes:
    rss = fmt == "rss"
    generator = FeedGenerator()
    if rss:
        generator.load_extension("dc", atom=False, rss=True)
        generator.load_extension("media", atom=False, rss=True)
        if channel.hubs:
            generator.register_extension(
                "newsroom_hubs",
                functools.partial(_RssHubLinks, channel.hubs),
                None,
                atom=False,
                rss=True,
            )
    generator.id(channel.self_url)
    generator.title(channel.title)
    generator.description(channel.description)
    generator.author(name=channel.site_title)
    # feedgen makes the last link the RSS <link>, so the alternate goes after self and hubs.
    self_type = MEDIA_TYPES[fmt].split(";")[0]
    generator.link(href=channel.self_url, rel="self", type=self_type)
    for hub in channel.hubs:
        generator.link(href=hub, rel="hub")
    generator.link(href=channel.home_url, rel="alternate", type="text/html")
    generator.updated(channel.updated)
    if channel.language:
        generator.language(channel.language)
    for item in items:
        generator.add_entry(_BuiltEntry(_entry_element(item, fmt)), order="append")
    if rss:
        with _RSS_LOCALE_LOCK:
            body: bytes = generator.rss_str()
    else:
        body = generator.atom_str()
    return body


class _BuiltEntry(FeedEntry):  # type: ignore[misc]  # feedgen is untyped
    """An entry whose element was built before: a feed differs from its last render by a
    story or two, and building each entry was most of the cost of a render."""

    def __init__(self, element: Any) -> None:
        super().__init__()
        self._element = element

    def atom_entry(self, extensions: bool = True) -> Any:
        return self._element

    def rss_entry(self, extensions: bool = True) -> Any:
        return self._element


def _entry_element(item: Item, fmt: FeedFormat) -> Any:
    """A copy of the item's RSS item or Atom entry element, built by feedgen once per item."""
    element = item.elements.get(fmt)
    if element is None:
        generator = FeedGenerator()
        if fmt == "rss":
            generator.load_extension("dc", atom=False, rss=True)
            generator.load_extension("media", atom=False, rss=True)
        _add_entry(generator, item, rss=fmt == "rss")
        (entry,) = generator.entry()
        if fmt == "rss":
            with _RSS_LOCALE_LOCK:  # an RSS item's dates are written under the switched locale
                element = entry.rss_entry()
        else:
            element = entry.atom_entry()
        item.elements[fmt] = element
    return copy.copy(element)  # lxml copies the whole element; the feed's tree takes the copy


def _add_entry(generator: Any, item: Item, *, rss: bool) -> None:
    entry = generator.add_entry(_Entry(), order="append")
    entry.guid(item.url, permalink=True)
    entry.title(item.title)
    entry.link(href=item.url, rel="alternate", type="text/html")
    if item.summary:
        entry.summary(item.summary)
        if rss:
            # RSS <description> is HTML, so plain text is escaped once more; this also sets
            # the Atom content, which content() below replaces.
            entry.description(html.escape(item.summary, quote=False))
    entry.content(item.content_html, type="html")
    entry.author(name=item.author)
    if rss:
        entry.dc.dc_creator(item.author)
    for category in item.categories:
        entry.category(term=category.term, label=category.label, scheme=category.scheme)
    entry.published(item.published)
    entry.updated(item.updated)
    picture = item.picture
    if picture is not None:
        entry.link(
            href=picture.url,
            rel="enclosure",
            type=picture.media_type,
            length=str(picture.length),
        )
        if rss:
            media = {"url": picture.url, "type": picture.media_type, "medium": "image"}
            if picture.length:
                media["fileSize"] = str(picture.length)
            if picture.width:
                media["width"] = str(picture.width)
            if picture.height:
                media["height"] = str(picture.height)
            # group=None puts media:content straight in the item: a one-item media:group
            # is an error to the W3C validator.
            entry.media.content(media, group=None)
