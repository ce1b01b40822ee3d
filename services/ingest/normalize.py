"""Pure helpers that turn wire text, markup and times into the story's normalised shape."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from lxml import etree  # type: ignore[import-untyped]

from shared.text import (
    MarkupTooDeep,
    clean_headline,
    clean_text,
    first_paragraph_text,
    html_to_text,
    looks_like_html,
    sanitize_html,
    slugify,
    text_to_html,
)

__all__ = [
    "MarkupTooDeep",
    "clean_headline",
    "clean_text",
    "first_paragraph_text",
    "html_to_text",
    "looks_like_html",
    "sanitize_html",
    "slugify",
    "text_to_html",
]


class ItemRejectedError(ValueError):
    """An item is well-formed but lacks, or garbles, something a story needs."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class TimeError(ItemRejectedError):
    """A wire time that cannot be read as a date and time."""

    def __init__(self, field: str, value: object) -> None:
        shown = value if not isinstance(value, str) else value[:64]
        super().__init__(f"unparseable time in {field}: {shown!r}", field)
        self.value = value


def optional_text(value: object) -> str | None:
    """A cleaned one-line string, or None for non-strings and blank strings."""
    if not isinstance(value, str):
        return None
    return clean_headline(value) or None


def safe_url(value: object) -> str | None:
    """The URL if it is an absolute http(s) URL, else None (no javascript:, data: ...)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if len(url.split(maxsplit=1)) != 1 or not url.lower().startswith(("http://", "https://")):
        return None
    try:
        host = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:
        return None
    return url if host else None


# Wire XML vocabularies (NITF, XHTML) whose elements have an HTML equivalent.
_XML_TO_HTML_TAGS = {"hl2": "h2", "bq": "blockquote", "block": "div", "nitf-table": "table"}


def xml_inner_html(element: Any) -> str:
    """Serialise an lxml element's content (XHTML, NITF) as an HTML fragment."""
    for node in element.iter():
        if node is not element and isinstance(node.tag, str):
            local = etree.QName(node).localname
            node.tag = _XML_TO_HTML_TAGS.get(local, local)
    etree.cleanup_namespaces(element)
    # method="html" so that empty elements are written <p></p>, not <p/>, which
    # an HTML parser would read as an unclosed tag.
    parts = [html.escape(element.text or "", quote=False)]
    parts.extend(etree.tostring(child, encoding="unicode", method="html") for child in element)
    return "".join(parts)


# Classification ----------------------------------------------------------------------

_SECTION_HINT_RE = re.compile(r"section|desk|categor|department|rubric", re.IGNORECASE)
_OPINION_HINT_RE = re.compile(
    r"opinion|commentary|column|editorial|op-?ed\b|viewpoint|комент|колонк|думк|мнени", re.IGNORECASE
)


def looks_like_section(identifiers: Iterable[str | None]) -> bool:
    """Whether a subject's scheme, uri or qcode names a section or desk vocabulary."""
    return any(i and _SECTION_HINT_RE.search(i) for i in identifiers)


def looks_like_opinion(identifiers: Iterable[str | None]) -> bool:
    """Whether a genre's name, uri or code says opinion, commentary or column."""
    return any(i and _OPINION_HINT_RE.search(i) for i in identifiers)


def code_value(identifier: str) -> str:
    """The code part of a qcode or URI: `genre:Opinion` and `.../genre/Opinion` give `Opinion`."""
    return re.split(r"[:/#]", identifier.rstrip("/"))[-1]


# Times -------------------------------------------------------------------------------


def _read_time(text: str) -> datetime | None:
    if text[:1].isdigit():
        try:
            return datetime.fromisoformat(text.upper())
        except ValueError:
            pass
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # RFC 5322: "-0000" is UTC with no statement about local time, not a local time.
    if parsed.tzinfo is None and text.endswith("-0000"):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def parse_time(value: object, *, default_tz: tzinfo, field: str) -> datetime:
    """An aware UTC datetime from ISO 8601 / RFC 3339 / RFC 822 text; naive times are read in default_tz."""
    parsed = value if isinstance(value, datetime) else None
    if isinstance(value, str) and value.strip():
        parsed = _read_time(value.strip())
    if parsed is None:
        raise TimeError(field, value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_tz)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise TimeError(field, value) from None


def optional_time(value: object, *, default_tz: tzinfo, field: str) -> datetime | None:
    """Like parse_time, but a missing or blank value gives None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_time(value, default_tz=default_tz, field=field)


def positive_int(value: object) -> int | None:
    """A non-negative int from a JSON number or a string of digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and 0 <= value < 2**63:
        return int(value)
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) < 19:
            return int(digits)
    return None
