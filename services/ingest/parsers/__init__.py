"""Wire formats: which one a post is in, reading its bytes safely, and the parser for it.

XML posts are dispatched by their root element, so a feed posted as `application/xml`
or a NewsML-G2 item posted as `application/rss+xml` is still read correctly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from datetime import tzinfo
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from services.ingest.parsers import column, feeds, newsml, ninjs
from services.ingest.parsers.base import (
    MAX_HEADLINE,
    MAX_LEDE,
    MAX_NESTING,
    MAX_TAGS,
    ItemError,
    MalformedPost,
    ParsedItem,
    ParseResult,
    PostOverLimit,
    check_item_count,
)

FORMATS = ("ninjs", "newsml-g2", "rss", "atom", "column")

_FORMAT_BY_MEDIA_TYPE = {
    "application/ninjs+json": "ninjs",
    "application/json": "ninjs",
    "application/vnd.iptc.g2.newsitem+xml": "newsml-g2",
    "application/vnd.iptc.g2.newsmessage+xml": "newsml-g2",
    "application/xml": "newsml-g2",
    "application/rss+xml": "rss",
    "application/atom+xml": "atom",
    "application/vnd.newsroom.column+json": "column",
}


def format_for_content_type(content_type: str | None, default: str | None) -> str | None:
    """The wire format for a Content-Type header; None if unknown, default if absent."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if not media_type:
        return default
    return _FORMAT_BY_MEDIA_TYPE.get(media_type)


def parse(fmt: str, body: bytes, *, default_tz: tzinfo) -> ParseResult:
    """Parse a wire post into items; raises MalformedPost if the body cannot be read at all."""
    return [fit(result, position) for position, result in enumerate(_parse(fmt, body, default_tz))]


def _parse(fmt: str, body: bytes, default_tz: tzinfo) -> ParseResult:
    if fmt == "ninjs":
        return ninjs.parse(load_json(body), default_tz=default_tz)
    if fmt == "column":
        return column.parse(load_json(body), default_tz=default_tz)
    if fmt not in FORMATS:
        raise ValueError(f"unknown wire format {fmt!r}")
    root = load_xml(body)
    if feeds.is_feed(root):
        return feeds.parse(root, default_tz=default_tz)
    if newsml.is_newsml(root):
        return newsml.parse(root, default_tz=default_tz)
    raise MalformedPost(f"<{etree.QName(root).localname}> is not a {fmt} document")


def count_items(fmt: str, body: bytes) -> int:
    """Read a post's structure only (form, nesting, item count), not its items; raises MalformedPost."""
    if fmt in ("ninjs", "column"):
        document = load_json(body)
        count = len(document) if isinstance(document, list) else 1
    elif fmt in FORMATS:
        root = load_xml(body)
        if feeds.is_feed(root):
            count = feeds.count(root)
        elif newsml.is_newsml(root):
            count = newsml.count(root)
        else:
            raise MalformedPost(f"<{etree.QName(root).localname}> is not a {fmt} document")
    else:
        raise ValueError(f"unknown wire format {fmt!r}")
    check_item_count(count)
    return count


# The sizes of the stories table's columns (a test keeps them in step with the model):
# a longer value would fail the whole post on PostgreSQL, or be kept whole on SQLite.
MAX_GUID = 500
MAX_AUTHOR_NAME = 200
MAX_GENRE = 100
MAX_LANGUAGE = 20
MAX_TAG = 200
_LANGUAGE_TAG_RE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*\Z")


def fit(result: ParsedItem | ItemError, position: int) -> ParsedItem | ItemError:
    """Make an item fit the story's columns: an overlong guid is refused, other text is cut."""
    if isinstance(result, ItemError):
        return result
    if len(result.guid) > MAX_GUID:
        return ItemError(
            position, f"guid is longer than {MAX_GUID} characters", guid=result.guid, field="guid"
        )
    for field, text, limit in (("headline", result.headline, MAX_HEADLINE), ("lede", result.lede, MAX_LEDE)):
        if text is not None and len(text) > limit:
            reason = f"{field} is {len(text)} characters long; at most {limit} are accepted"
            return ItemError(position, reason, guid=result.guid, field=field)
    if len(result.tags) > MAX_TAGS:
        reason = f"item has {len(result.tags)} tags; at most {MAX_TAGS} are accepted"
        return ItemError(position, reason, guid=result.guid, field="tags")
    language = (result.language or "").replace("_", "-")
    return dataclasses.replace(
        result,
        author_name=_cut(result.author_name, MAX_AUTHOR_NAME),
        genre=_cut(result.genre, MAX_GENRE),
        # Not a language tag (or an absurdly long one): better no language than a wrong one.
        language=language if len(language) <= MAX_LANGUAGE and _LANGUAGE_TAG_RE.match(language) else None,
        tags=[tag[:MAX_TAG].rstrip() for tag in result.tags],
    )


def _cut(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _invalid_utf8(body: bytes, error: UnicodeDecodeError) -> MalformedPost:
    line_start = body.rfind(b"\n", 0, error.start) + 1
    return MalformedPost(
        f"invalid UTF-8 at byte {error.start}",
        line=body.count(b"\n", 0, error.start) + 1,
        column=error.start - line_start + 1,
    )


def load_json(body: bytes) -> Any:
    """Decode a UTF-8 JSON post, turning every failure into MalformedPost with its position."""
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise _invalid_utf8(body, error) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise MalformedPost(error.msg, line=error.lineno, column=error.colno) from None
    except ValueError as error:  # e.g. an integer beyond Python's digit limit
        raise MalformedPost(str(error)) from None
    except RecursionError:  # deeper than the interpreter's limit, far past ours
        raise _too_deep("JSON") from None
    if _json_depth(document) > MAX_NESTING:
        raise _too_deep("JSON")
    return document


def _too_deep(kind: str) -> PostOverLimit:
    return PostOverLimit(f"{kind} nested deeper than {MAX_NESTING} levels")


def _json_depth(document: Any) -> int:
    """How deeply arrays and objects nest (without recursion), stopping past MAX_NESTING."""
    deepest = 0
    pending = [(document, 1)]
    while pending and deepest <= MAX_NESTING:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


_XML_ENCODING_RE = re.compile(rb"\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)")
_POSITION_SUFFIX_RE = re.compile(r", line \d+, column \d+$")
_NO_ENTITIES = "XML entity declarations are not allowed"
_local = threading.local()


def _xml_parser() -> Any:
    # lxml parsers must not be shared between threads; one per thread is reused.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
    return parser


def load_xml(body: bytes) -> Any:
    """Parse an XML post with a hardened parser; entity declarations are refused, never expanded."""
    declared = _XML_ENCODING_RE.match(body.removeprefix(b"\xef\xbb\xbf"), 0, 200)
    if declared is None or declared.group(1).lower() in (b"utf-8", b"utf8"):
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            if not body.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM is fine
                raise _invalid_utf8(body, error) from None
    # Cheap refusal before libxml2 sees the declarations; the DTD check below also
    # catches them in encodings where the bytes differ (UTF-16).
    if b"<!ENTITY" in body:
        raise MalformedPost(_NO_ENTITIES)
    try:
        root = etree.fromstring(body, _xml_parser())
    except etree.XMLSyntaxError as error:
        if error.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT and "depth" in error.msg.lower():
            raise _too_deep("XML") from None  # libxml2's own limit (256), past ours
        line, column = error.position
        raise MalformedPost(_POSITION_SUFFIX_RE.sub("", error.msg), line=line, column=column) from None
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise MalformedPost(_NO_ENTITIES)
    # An element MAX_NESTING + 1 levels down, found by libxml2 level by level (linear, in C).
    if root.xpath("boolean(" + "/*" * (MAX_NESTING + 1) + ")"):
        raise _too_deep("XML")
    return root
