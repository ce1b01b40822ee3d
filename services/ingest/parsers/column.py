"""The newsroom's column format (`application/vnd.newsroom.column+json`): always opinion."""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from services.ingest.normalize import (
    ItemRejectedError,
    MarkupTooDeep,
    html_to_text,
    optional_text,
    optional_time,
    positive_int,
    safe_url,
    sanitize_html,
)
from services.ingest.parsers.base import (
    ItemError,
    ParsedItem,
    ParseResult,
    check_item_count,
    check_subject_count,
)

OPINION = "opinion"


def parse(document: object, *, default_tz: tzinfo) -> ParseResult:
    """Parse a decoded column post (one object, or an array of them) into items."""
    entries = document if isinstance(document, list) else [document]
    check_item_count(len(entries))
    return [_parse_entry(position, entry, default_tz) for position, entry in enumerate(entries)]


def _parse_entry(position: int, entry: object, default_tz: tzinfo) -> ParsedItem | ItemError:
    if not isinstance(entry, dict):
        return ItemError(position, "column is not a JSON object")
    guid = optional_text(entry.get("guid"))
    if guid is None:
        return ItemError(position, "column has no guid", field="guid")
    try:
        return _item(entry, guid, default_tz)
    except ItemRejectedError as error:
        return ItemError(position, error.reason, guid=guid, field=error.field)
    except MarkupTooDeep as error:
        return ItemError(position, str(error), guid=guid)


def _required(value: str | None, field: str) -> str:
    if not value:
        raise ItemRejectedError(f"column has no {field}", field)
    return value


def _item(entry: dict[str, Any], guid: str, default_tz: tzinfo) -> ParsedItem:
    headline = _required(optional_text(entry.get("headline")), "headline")
    raw_body = entry.get("body_html")
    body_html = _required(sanitize_html(raw_body) if isinstance(raw_body, str) else None, "body_html")
    author = entry.get("author")
    author = author if isinstance(author, dict) else {}
    author_name = _required(optional_text(author.get("name")), "author.name")
    written_at = optional_time(entry.get("written_at"), default_tz=default_tz, field="written_at")
    tags = entry.get("tags")
    if isinstance(tags, list):
        check_subject_count(len(tags), "tags")
    return ParsedItem(
        guid=guid,
        headline=headline,
        body_html=body_html,
        body_text=html_to_text(body_html),
        lede=optional_text(entry.get("lede")),
        version=positive_int(entry.get("version")),
        version_created=written_at,
        first_created=written_at,
        byline=author_name,
        author_name=author_name,
        author_bio=optional_text(author.get("bio")),
        section=optional_text(entry.get("section")) or OPINION,
        tags=list(dict.fromkeys(t for t in map(optional_text, tags) if t)) if isinstance(tags, list) else [],
        labels=[OPINION],
        genre=OPINION,
        language=optional_text(entry.get("language")),
        source_url=safe_url(entry.get("source_url")),
        disclaimer=optional_text(entry.get("disclaimer")),
    )
