"""IPTC ninjs 1.x, 2.x and 3.x items: one JSON object, or an array of them.

The three versions differ mostly in spelling (1.x `headline`/`body_html`, 2.x
`headlines[]`/`bodies[]`, 3.x camelCase such as `versionCreated`), so every field is
looked up under each of its names. Section: the subject whose scheme, uri or literal
names a section/desk/category vocabulary, else the first subject; tags: the other
subjects' names. An opinion genre (opinion, commentary, column...) labels the item
`opinion`.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any, cast

from services.ingest.normalize import (
    ItemRejectedError,
    MarkupTooDeep,
    code_value,
    html_to_text,
    looks_like_html,
    looks_like_opinion,
    looks_like_section,
    optional_text,
    optional_time,
    positive_int,
    safe_url,
    sanitize_html,
    text_to_html,
)
from services.ingest.parsers.base import (
    ItemError,
    ParsedItem,
    ParseResult,
    Picture,
    PubStatus,
    check_item_count,
    check_subject_count,
)

_PUBSTATUS: dict[str, PubStatus] = {
    "usable": "usable",
    "canceled": "canceled",
    "cancelled": "canceled",
    "withheld": "withheld",
}
_FEATURED_NAMES = ("featureimage", "featuremedia", "featuredimage", "featured")
_PREFERRED_RENDITIONS = ("original", "baseimage")


def parse(document: object, *, default_tz: tzinfo) -> ParseResult:
    """Parse a decoded ninjs post (an object or an array of objects) into items."""
    entries = document if isinstance(document, list) else [document]
    check_item_count(len(entries))
    return [_parse_entry(position, entry, default_tz) for position, entry in enumerate(entries)]


def _parse_entry(position: int, entry: object, default_tz: tzinfo) -> ParsedItem | ItemError:
    if not isinstance(entry, dict):
        return ItemError(position, "item is not a JSON object")
    guid = optional_text(entry.get("uri")) or optional_text(entry.get("guid"))
    if guid is None:
        return ItemError(position, "item has no uri", field="uri")
    try:
        return _item(entry, guid, default_tz)
    except ItemRejectedError as error:
        return ItemError(position, error.reason, guid=guid, field=error.field)
    except MarkupTooDeep as error:
        return ItemError(position, str(error), guid=guid)


def _get(entry: dict[str, Any], *names: str) -> Any:
    """The first of a field's spellings (1.x, 2.x, 3.x) that the entry has."""
    for name in names:
        value = entry.get(name)
        if value is not None:
            return value
    return None


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _content_type(part: dict[str, Any]) -> str:
    return str(_get(part, "contenttype", "contentType", "mimetype") or "").lower()


def _is_markup(part: dict[str, Any]) -> bool:
    content_type = _content_type(part)
    if content_type:
        return "html" in content_type or "xml" in content_type
    return looks_like_html(part["value"])


def _texts(entry: dict[str, Any], plural: str, singular: str) -> list[dict[str, Any]]:
    """Headlines, bodies or descriptions as 2.x parts, whichever version the entry is."""
    parts = [p for p in _dicts(entry.get(plural)) if isinstance(p.get("value"), str) and p["value"].strip()]
    if parts:
        return parts
    # 1.x: `headline`, or `body_html` / `body_text` / `description_text`...
    value = entry.get(singular)
    if isinstance(value, str) and value.strip():
        parts.append({"value": value, "contenttype": "text/plain"})
    prefix = singular + "_"
    for key, value in entry.items():
        if key.startswith(prefix) and isinstance(value, str) and value.strip():
            kind = key[len(prefix) :]
            html_like = "html" in kind or "xml" in kind
            parts.append({"value": value, "contenttype": "text/html" if html_like else "text/plain"})
    return parts


def _main_first(part: dict[str, Any]) -> bool:
    return part.get("role") not in (None, "main")


def _first_text(parts: list[dict[str, Any]]) -> str | None:
    for part in parts:
        # Headlines and descriptions are plain text unless they say otherwise: a
        # headline may well read "Kyiv <update>", and that is text, not a tag.
        content_type = _content_type(part) or ""
        html_like = "html" in content_type or "xml" in content_type
        text = html_to_text(part["value"]) if html_like else part["value"]
        if cleaned := optional_text(text):
            return cleaned
    return None


def _headline(entry: dict[str, Any]) -> str | None:
    return _first_text(sorted(_texts(entry, "headlines", "headline"), key=_main_first))


def _description(entry: dict[str, Any]) -> str | None:
    # Plain text first: it needs no conversion and is what the wire wrote for a lede.
    return _first_text(sorted(_texts(entry, "descriptions", "description"), key=_is_markup))


def _body_html(entry: dict[str, Any]) -> str:
    # Markup beats plain text (2.x items often carry both), then role "main". Whether a
    # part is markup may take parsing it: asked once per part.
    parts = [(_is_markup(part), part) for part in _texts(entry, "bodies", "body")]
    parts.sort(key=lambda marked: (not marked[0], _main_first(marked[1])))
    for markup, part in parts:
        # text_to_html escapes every character of markup: its paragraphs need no sanitising.
        body = sanitize_html(part["value"]) if markup else text_to_html(part["value"])
        if body:
            return body
    raise ItemRejectedError("item has no body", "body")


def _subjects(entry: dict[str, Any]) -> tuple[str | None, list[str]]:
    section: str | None = None
    tags: dict[str, None] = {}  # in order, without repeats
    subjects = _dicts(_get(entry, "subjects", "subject"))
    check_subject_count(len(subjects))
    for subject in subjects:
        name = optional_text(subject.get("name"))
        identifiers = [subject.get(k) for k in ("uri", "scheme", "literal", "code")]
        codes = [i for i in identifiers if isinstance(i, str) and i.strip()]
        if section is None and looks_like_section(codes):
            section = name or optional_text(code_value(codes[-1]))
        elif name:
            tags[name] = None
    return section or next(iter(tags), None), list(tags)


def _genre(entry: dict[str, Any]) -> tuple[str | None, list[str]]:
    genres = _dicts(_get(entry, "genres", "genre"))
    for genre in genres:
        identifiers = [genre.get(k) for k in ("name", "uri", "literal", "code")]
        if looks_like_opinion(i for i in identifiers if isinstance(i, str)):
            return "opinion", ["opinion"]
    for genre in genres:
        name = optional_text(genre.get("name"))
        code = optional_text(_get(genre, "literal", "code", "uri"))
        if name or code:
            return (name or code_value(cast(str, code))).lower(), []
    return None, []


def _pubstatus(entry: dict[str, Any]) -> PubStatus:
    value = _get(entry, "pubstatus", "pubStatus")
    if value is None:
        return "usable"
    status = _PUBSTATUS.get(str(value).strip().lower())
    if status is None:
        raise ItemRejectedError(f"unknown pubstatus {value!r}", "pubstatus")
    return status


def _renditions(value: object) -> list[dict[str, Any]]:
    if isinstance(value, dict):  # 1.x: keyed by rendition name
        return [{"name": k, **v} for k, v in value.items() if isinstance(v, dict)]
    return _dicts(value)


def _picture(entry: dict[str, Any]) -> Picture | None:
    associations = entry.get("associations")
    if isinstance(associations, dict):  # 1.x: keyed by association name
        candidates = [{"name": k, **v} for k, v in associations.items() if isinstance(v, dict)]
    else:
        candidates = _dicts(associations)
    featured = [
        a
        for a in candidates
        if str(a.get("name")).lower() in _FEATURED_NAMES and a.get("type") in (None, "picture")
    ]
    for association in featured + [a for a in candidates if a.get("type") == "picture"]:
        if picture := _picture_of(association):
            return picture
    return None


def _picture_of(association: dict[str, Any]) -> Picture | None:
    renditions = [r for r in _renditions(association.get("renditions")) if safe_url(r.get("href"))]

    def area(rendition: dict[str, Any]) -> tuple[int, int]:
        width = positive_int(rendition.get("width")) or 0
        height = positive_int(rendition.get("height")) or 0
        return width * height, positive_int(_get(rendition, "sizeinbytes", "sizeInBytes")) or 0

    best = next(
        (r for r in renditions if str(r.get("name")).lower() in _PREFERRED_RENDITIONS),
        max(renditions, key=area, default=None),
    )
    caption = (
        _description(association)
        or _first_text(_texts(association, "bodies", "body"))
        or _headline(association)
    )
    credit = optional_text(
        _get(association, "creditline", "by", "byline", "copyrightholder", "copyrightHolder")
    )
    if best is None:
        # Some wires give a picture's own URL as its uri, with no renditions to pick from.
        url = safe_url(association.get("uri")) if association.get("type") == "picture" else None
        return Picture(url, caption=caption, credit=credit) if url else None
    return Picture(
        url=best["href"].strip(),
        media_type=_content_type(best) or None,
        width=positive_int(best.get("width")),
        height=positive_int(best.get("height")),
        size=positive_int(_get(best, "sizeinbytes", "sizeInBytes")),
        caption=caption,
        credit=credit,
    )


def _item(entry: dict[str, Any], guid: str, default_tz: tzinfo) -> ParsedItem:
    headline = _headline(entry)
    if headline is None:
        raise ItemRejectedError("item has no headline", "headline")
    body_html = _body_html(entry)
    section, tags = _subjects(entry)
    genre, labels = _genre(entry)
    byline = optional_text(_get(entry, "by", "byline"))
    version_created = optional_time(
        _get(entry, "versioncreated", "versionCreated"), default_tz=default_tz, field="versioncreated"
    )
    first_created = optional_time(
        _get(entry, "firstcreated", "firstCreated"), default_tz=default_tz, field="firstcreated"
    ) or optional_time(
        _get(entry, "contentcreated", "contentCreated"), default_tz=default_tz, field="contentcreated"
    )
    return ParsedItem(
        guid=guid,
        headline=headline,
        body_html=body_html,
        body_text=html_to_text(body_html),
        lede=_description(entry),
        version=positive_int(entry.get("version")),
        version_created=version_created,
        first_created=first_created,
        byline=byline,
        author_name=byline,
        section=section,
        tags=tags,
        labels=labels,
        genre=genre,
        language=optional_text(entry.get("language")),
        embargo_until=optional_time(
            _get(entry, "embargoed", "embargoedUntil"), default_tz=default_tz, field="embargoed"
        ),
        pubstatus=_pubstatus(entry),
        picture=_picture(entry),
    )
