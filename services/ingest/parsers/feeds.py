"""RSS 2.0 and Atom 1.0 documents posted by a wire: every entry is an item.

Identity: RSS `guid`, else `link`; Atom `id`. Body: `content:encoded` or Atom `content`,
else the description / summary, which is otherwise the lede. Section: the first category
whose `domain` / `scheme` names a section, else the first category; tags: the other
categories. Times: RSS `pubDate` and Atom `published` are the first-created time, Atom
`updated` the version's; there is no version number, so the store compares content.
Picture: the largest image `media:content`, else an image `enclosure` (Atom
`link rel="enclosure"`), else `media:thumbnail`.
"""

from __future__ import annotations

import mimetypes
from datetime import datetime, tzinfo
from typing import Any

from services.ingest.normalize import (
    ItemRejectedError,
    MarkupTooDeep,
    html_to_text,
    looks_like_section,
    optional_text,
    optional_time,
    positive_int,
    safe_url,
    sanitize_html,
    text_to_html,
    xml_inner_html,
)
from services.ingest.parsers.base import (
    ItemError,
    ParsedItem,
    ParseResult,
    Picture,
    check_item_count,
    check_subject_count,
)

_ATOM = "{http://www.w3.org/2005/Atom}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_MEDIA = "{http://search.yahoo.com/mrss/}"
_XHTML = "{http://www.w3.org/1999/xhtml}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_ROOTS = frozenset({"rss", _ATOM + "feed", _ATOM + "entry"})


def is_feed(root: Any) -> bool:
    """Whether a parsed XML root is an RSS 2.0 or Atom document."""
    return root.tag in _ROOTS


def _entries(root: Any) -> tuple[Any, list[Any]]:
    """The channel (RSS) or feed (Atom) and its entries."""
    if root.tag == "rss":
        channel = root.find("channel")
        return channel, [] if channel is None else channel.findall("item")
    return root, root.findall(_ATOM + "entry") if root.tag == _ATOM + "feed" else [root]


def count(root: Any) -> int:
    """How many items a feed document holds."""
    return len(_entries(root)[1])


def parse(root: Any, *, default_tz: tzinfo) -> ParseResult:
    """Parse an RSS or Atom document (already loaded by the hardened XML parser) into items."""
    is_rss = root.tag == "rss"
    channel, entries = _entries(root)
    check_item_count(len(entries))
    build = _rss_item if is_rss else _atom_item
    items: ParseResult = []
    for position, entry in enumerate(entries):
        if is_rss:
            guid = optional_text(entry.findtext("guid")) or optional_text(entry.findtext("link"))
        else:
            guid = optional_text(entry.findtext(_ATOM + "id"))
        if guid is None:
            reason = "item has no guid or link" if is_rss else "entry has no id"
            items.append(ItemError(position, reason, field="guid"))
            continue
        try:
            items.append(build(entry, channel, guid, default_tz))
        except ItemRejectedError as error:
            items.append(ItemError(position, error.reason, guid=guid, field=error.field))
        except MarkupTooDeep as error:
            items.append(ItemError(position, str(error), guid=guid))
    return items


def _rss_item(entry: Any, channel: Any, guid: str, default_tz: tzinfo) -> ParsedItem:
    creators = [t for e in entry.iterfind(_DC + "creator") if (t := optional_text(e.text))]
    if not creators and (author := optional_text(entry.findtext("author"))):
        # RSS <author> is "email (Name)"; a bare address is no byline.
        if name := _parenthesised_name(author):
            creators = [name]
        elif "@" not in author:
            creators = [author]
    categories = [(e.text, e.get("domain")) for e in entry.iterfind("category")]
    return _item(
        guid=guid,
        title=entry.findtext("title"),
        content_html=entry.findtext(_CONTENT + "encoded"),
        summary_html=entry.findtext("description"),
        categories=categories,
        authors=creators,
        source_url=safe_url(entry.findtext("link")),
        language=entry.findtext(_DC + "language") or channel.findtext("language"),
        first_created=optional_time(
            entry.findtext("pubDate") or entry.findtext(_DC + "date"),
            default_tz=default_tz,
            field="pubDate",
        ),
        version_created=optional_time(
            entry.findtext(_ATOM + "updated"), default_tz=default_tz, field="updated"
        ),
        picture=_picture(entry, entry.iterfind("enclosure"), "url"),
    )


def _parenthesised_name(author: str) -> str | None:
    """The name in an RSS author's closing parentheses: `jane@example.org (Jane Doe)`."""
    if not author.endswith(")"):
        return None
    _before, opening, name = author[:-1].rpartition("(")
    if not opening or ")" in name:
        return None
    return name.strip() or None


def _atom_item(entry: Any, feed: Any, guid: str, default_tz: tzinfo) -> ParsedItem:
    authors = entry.findall(_ATOM + "author") or feed.findall(_ATOM + "author")
    links = entry.findall(_ATOM + "link")
    alternate = next((li for li in links if li.get("rel", "alternate") == "alternate"), None)
    updated = optional_time(entry.findtext(_ATOM + "updated"), default_tz=default_tz, field="updated")
    title = entry.find(_ATOM + "title")
    return _item(
        guid=guid,
        title=None if title is None else html_to_text(_atom_html(title) or ""),
        content_html=_atom_html(entry.find(_ATOM + "content")),
        summary_html=_atom_html(entry.find(_ATOM + "summary")),
        categories=[
            (e.get("label") or e.get("term"), e.get("scheme")) for e in entry.iterfind(_ATOM + "category")
        ],
        authors=[t for a in authors if (t := optional_text(a.findtext(_ATOM + "name")))],
        source_url=None if alternate is None else safe_url(alternate.get("href")),
        language=entry.get(_XML_LANG) or feed.get(_XML_LANG),
        first_created=optional_time(
            entry.findtext(_ATOM + "published"), default_tz=default_tz, field="published"
        )
        or updated,
        version_created=updated,
        picture=_picture(entry, (li for li in links if li.get("rel") == "enclosure"), "href"),
    )


def _atom_html(element: Any) -> str | None:
    """An Atom text construct (text, html or xhtml) as HTML; None for out-of-line content."""
    if element is None or element.get("src"):
        return None
    kind = (element.get("type") or "text").lower()
    if kind == "xhtml":
        div = element.find(_XHTML + "div")
        return xml_inner_html(element if div is None else div)
    if kind in ("html", "text/html"):
        return str(element.text or "")
    return text_to_html("".join(element.itertext()))


def _item(
    *,
    guid: str,
    title: str | None,
    content_html: str | None,
    summary_html: str | None,
    categories: list[tuple[str | None, str | None]],
    authors: list[str],
    source_url: str | None,
    language: str | None,
    first_created: datetime | None,
    version_created: datetime | None,
    picture: Picture | None,
) -> ParsedItem:
    headline = optional_text(title)
    if headline is None:
        raise ItemRejectedError("item has no headline", "headline")
    body_html = sanitize_html(content_html or "")
    lede = optional_text(html_to_text(summary_html)) if body_html and summary_html else None
    if not body_html:
        body_html = sanitize_html(summary_html or "")
    if not body_html:
        raise ItemRejectedError("item has no body", "body")
    check_subject_count(len(categories), "categories")
    section: str | None = None
    tags: dict[str, None] = {}  # in order, without repeats
    for term, scheme in categories:
        name = optional_text(term)
        if name and section is None and looks_like_section([scheme]):
            section = name
        elif name:
            tags[name] = None
    return ParsedItem(
        guid=guid,
        headline=headline,
        body_html=body_html,
        body_text=html_to_text(body_html),
        lede=lede,
        version_created=version_created,
        first_created=first_created,
        byline=", ".join(authors) or None,
        author_name=authors[0] if authors else None,
        section=section or next(iter(tags), None),
        tags=list(tags),
        language=optional_text(language),
        source_url=source_url,
        picture=picture,
    )


def _is_image(media_type: str | None, url: str, medium: str | None = None) -> bool:
    if medium:
        return medium == "image"
    return (media_type or mimetypes.guess_type(url)[0] or "").startswith("image/")


def _media_text(media: Any, name: str, entry: Any) -> str | None:
    """A media:description / media:credit of the media element, its group, or the entry."""
    scopes = [media, media.getparent(), entry] if media is not None else [entry]
    for scope in dict.fromkeys(scopes):
        if (text := optional_text(scope.findtext(_MEDIA + name))) is not None:
            return text
    return None


def _area(media: Any) -> tuple[int, int]:
    area = (positive_int(media.get("width")) or 0) * (positive_int(media.get("height")) or 0)
    return area, positive_int(media.get("fileSize")) or 0


def _picture(entry: Any, enclosures: Any, url_attribute: str) -> Picture | None:
    contents = [
        m
        for m in entry.iter(_MEDIA + "content")
        if (url := safe_url(m.get("url"))) and _is_image(m.get("type"), url, m.get("medium"))
    ]
    if contents:
        best = max(contents, key=_area)
        return _media_picture(entry, best, best.get("url"), best.get("type"), best.get("fileSize"))
    for enclosure in enclosures:
        url = safe_url(enclosure.get(url_attribute))
        if url and _is_image(enclosure.get("type"), url):
            return _media_picture(entry, None, url, enclosure.get("type"), enclosure.get("length"))
    thumbnail = entry.find(f".//{_MEDIA}thumbnail")
    if thumbnail is not None and (url := safe_url(thumbnail.get("url"))):
        return _media_picture(entry, thumbnail, url, None, None)
    return None


def _media_picture(entry: Any, media: Any, url: str, media_type: str | None, length: str | None) -> Picture:
    url = url.strip()
    return Picture(
        url=url,
        media_type=media_type or mimetypes.guess_type(url)[0],
        width=None if media is None else positive_int(media.get("width")),
        height=None if media is None else positive_int(media.get("height")),
        size=positive_int(length),
        caption=_media_text(media, "description", entry) or _media_text(media, "title", entry),
        credit=_media_text(media, "credit", entry),
    )
