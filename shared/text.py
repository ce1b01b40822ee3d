"""Text every service needs: cleaning, HTML sanitising (nh3), plain text, slugs."""

from __future__ import annotations

import html
import re
import threading
import unicodedata
from typing import Any

import nh3
from lxml import etree  # type: ignore[import-untyped]
from slugify import slugify as _ascii_slug

# Text: C0/C1 controls (except tab and newline), lone surrogates that JSON escapes can
# smuggle in (they break UTF-8 encoding downstream), and the two non-characters.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean_text(s: str) -> str:
    """NFC-normalise and drop control characters, keeping newlines and tabs."""
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL_RE.sub("", s)
    return s if s.isascii() else unicodedata.normalize("NFC", s)


def clean_headline(s: str) -> str:
    """Clean text and collapse every run of whitespace to one space."""
    return " ".join(clean_text(s).split())


# HTML --------------------------------------------------------------------------------

_TAGS = {
    "p",
    "br",
    "hr",
    "a",
    "b",
    "strong",
    "i",
    "em",
    "u",
    "s",
    "sub",
    "sup",
    "small",
    "mark",
    "q",
    "cite",
    "abbr",
    "code",
    "pre",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "blockquote",
    "figure",
    "figcaption",
    "img",
    "table",
    "caption",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "th",
    "td",
    "span",
    "div",
}
_ATTRIBUTES = {
    "*": set[str](),  # overrides ammonia's generic lang/title
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "abbr": {"title"},
    "ol": {"start"},
    "th": {"colspan", "rowspan", "scope"},
    "td": {"colspan", "rowspan"},
}
_URL_SCHEMES = {"http", "https", "mailto"}
# Tags whose content is code or an embedded document, never readable text.
_DROP_WITH_CONTENT = {"script", "style", "iframe", "object", "noscript", "template", "svg", "math"}


# Deeper than this, an HTML fragment is refused: stories nest a handful of levels, and an
# HTML5 tree builder (nh3's) costs time in proportion to the depth for every tag it reads.
MAX_HTML_DEPTH = 64


class MarkupTooDeep(ValueError):
    """An HTML fragment nests elements deeper than MAX_HTML_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"HTML nested deeper than {MAX_HTML_DEPTH} levels")


_local = threading.local()


def _html_parser() -> Any:
    # lxml parsers must not be shared between threads; one per thread is reused.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.HTMLParser(
            recover=True, no_network=True, remove_comments=True, remove_pis=True, default_doctype=False
        )
    return parser


def _parse_html(html_text: str) -> Any:
    """Wire HTML as a tree (libxml2's HTML5 tokenizer: linear time), its depth checked.

    None for blank text; comments and processing instructions are dropped by the parser.
    """
    if not html_text.strip():
        return None
    root = etree.fromstring(html_text, _html_parser())
    if root is None:
        return None
    depth = 0
    for event, element in etree.iterwalk(root, events=("start", "end")):
        if element.tag not in _DOCUMENT_TAGS:  # the parser's own wrappers do not count
            depth += 1 if event == "start" else -1
            if depth > MAX_HTML_DEPTH:
                raise MarkupTooDeep
    return root


def _html_tree(html_text: str) -> Any:
    """Like _parse_html, with code (script, style...) dropped with its content."""
    root = _parse_html(html_text)
    if root is not None:
        etree.strip_elements(root, *_DROP_WITH_CONTENT, with_tail=False)
    return root


# nh3 takes time that grows with the square of a text node's or an attribute value's length
# when it holds certain characters (character references such as '&amp;', and some Latin-1
# signs: '\xa0', 'º', 'ª', '°'). Text is handed over in pieces of _TEXT_PIECE characters,
# and longer attribute values than MAX_ATTRIBUTE_CHARS are dropped: no link, image address
# or title of a story is that long.
_TEXT_PIECE = 2048
MAX_ATTRIBUTE_CHARS = 2048


def _pieces(text: str) -> list[str]:
    return [text[start : start + _TEXT_PIECE] for start in range(0, len(text), _TEXT_PIECE)]


def _segment_text(element: Any) -> None:
    """Split an element's long text and tail with <wbr>, which nh3 drops, joining the text again."""
    if element.text and len(element.text) > _TEXT_PIECE:
        first, *rest = _pieces(element.text)
        element.text = first
        for position, piece in enumerate(rest):
            breaker = etree.Element("wbr")
            breaker.tail = piece
            element.insert(position, breaker)
    if element.tail and len(element.tail) > _TEXT_PIECE and element.getparent() is not None:
        first, *rest = _pieces(element.tail)
        element.tail = first
        for piece in reversed(rest):
            breaker = etree.Element("wbr")
            breaker.tail = piece
            element.addnext(breaker)


def sanitize_html(html_text: str) -> str:
    """Reduce wire HTML to the safe subset stories are stored and shown in.

    The text is read by lxml first and nh3 cleans lxml's well-formed serialisation: nh3's
    HTML5 tree builder, given misnested markup, can rebuild formatting elements over and over
    (quadratic time and output); given a well-formed tree of bounded depth it cannot.
    Raises MarkupTooDeep.
    """
    root = _html_tree(clean_text(html_text))
    if root is None:
        return ""
    for element in list(root.iter()):
        if element.attrib:
            allowed = _ATTRIBUTES.get(element.tag, ())
            for name, value in list(element.attrib.items()):
                if name not in allowed or len(value) > MAX_ATTRIBUTE_CHARS:
                    del element.attrib[name]
        _segment_text(element)
    well_formed = etree.tostring(root, encoding="unicode", method="html")
    return nh3.clean(
        well_formed,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        clean_content_tags=_DROP_WITH_CONTENT,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "ul",
        "ol",
        "li",
        "dl",
        "dt",
        "dd",
        "blockquote",
        "figure",
        "figcaption",
        "table",
        "caption",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "pre",
        "hr",
        "section",
        "article",
        "header",
        "footer",
        "aside",
    }
)
_TAG_TEXT = {name: "\n\n" for name in _BLOCK_TAGS} | {"br": "\n", "td": " ", "th": " "}
_VOID_TAGS = frozenset({"br", "hr", "img", "wbr"})  # one tag, so one break
_DOCUMENT_TAGS = frozenset({"html", "head", "body"})  # what the parser adds around any text


def _spaced(text: str | None) -> str:
    """Source whitespace is one space in HTML (only tags make line breaks)."""
    if not text:
        return ""
    words = " ".join(text.split())
    if not words:
        return " "
    return (" " if text[0].isspace() else "") + words + (" " if text[-1].isspace() else "")


def html_to_text(html_text: str) -> str:
    """Plain text of an HTML fragment: paragraphs separated by a blank line. Raises MarkupTooDeep."""
    root = _html_tree(clean_text(html_text))
    if root is None:
        return ""
    parts: list[str] = []
    for event, element in etree.iterwalk(root, events=("start", "end")):
        separator = _TAG_TEXT.get(element.tag, "") if isinstance(element.tag, str) else ""
        if event == "start":
            parts += (separator, _spaced(element.text))
        else:
            parts += ("" if element.tag in _VOID_TAGS else separator, _spaced(element.tail))
    text = "".join(parts)
    # Plain str.replace loops: each pass at least halves every run.
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return clean_text(text.strip())


def looks_like_html(text: str) -> bool:
    """Whether a string of unknown type carries elements or entities (as lxml reads it)."""
    cleaned = clean_text(text)
    try:
        root = _parse_html(cleaned)
    except MarkupTooDeep:
        return True
    if root is None:
        return False
    if any(element.tag not in _DOCUMENT_TAGS for element in root.iter()):
        return True
    # Entities are decoded by the parser: text with an '&' that reads differently had some.
    return "&" in cleaned and "".join(root.itertext()).strip() != cleaned.strip()


def first_paragraph_text(html_text: str) -> str | None:
    """Text of the first non-empty paragraph of an HTML fragment, for a lede fallback."""
    return html_to_text(html_text).partition("\n\n")[0] or None


_PARAGRAPH_BREAK_RE = re.compile(r"\n[^\S\n]*\n\s*")


def text_to_html(text: str) -> str:
    """Plain text as HTML paragraphs: blank lines split paragraphs, newlines become <br>."""
    paragraphs = _PARAGRAPH_BREAK_RE.split(clean_text(text).strip())
    return "".join(
        "<p>" + html.escape(p.strip(), quote=False).replace("\n", "<br>") + "</p>"
        for p in paragraphs
        if p.strip()
    )


# Slugs -------------------------------------------------------------------------------

# Ukrainian national transliteration (KMU 2010), which text-unidecode does not follow:
# "Київ" becomes "kyiv" rather than "kiiv".
_UKRAINIAN_RE = re.compile("[ґєіїҐЄІЇ]")
_UKRAINIAN_INITIAL_RE = re.compile(r"\b[єїйюя]")
_UKRAINIAN_INITIAL = {"є": "ye", "ї": "yi", "й": "y", "ю": "yu", "я": "ya"}
_UKRAINIAN = str.maketrans(
    {
        "а": "a",
        "б": "b",
        "в": "v",
        "г": "h",
        "ґ": "g",
        "д": "d",
        "е": "e",
        "є": "ie",
        "ж": "zh",
        "з": "z",
        "и": "y",
        "і": "i",
        "ї": "i",
        "й": "i",
        "к": "k",
        "л": "l",
        "м": "m",
        "н": "n",
        "о": "o",
        "п": "p",
        "р": "r",
        "с": "s",
        "т": "t",
        "у": "u",
        "ф": "f",
        "х": "kh",
        "ц": "ts",
        "ч": "ch",
        "ш": "sh",
        "щ": "shch",
        "ь": "",
        "ю": "iu",
        "я": "ia",
    }
)
_APOSTROPHE_RE = re.compile(r"(?<=\w)['’ʼ`](?=\w)")


def _transliterate_ukrainian(text: str) -> str:
    text = _UKRAINIAN_INITIAL_RE.sub(lambda m: _UKRAINIAN_INITIAL[m.group()], text.lower())
    return text.replace("зг", "zgh").translate(_UKRAINIAN)


def slugify(text: str, max_length: int = 80) -> str:
    """An ASCII URL slug of a headline, transliterating Cyrillic; never empty."""
    text = _APOSTROPHE_RE.sub("", clean_text(text))
    if _UKRAINIAN_RE.search(text):
        text = _transliterate_ukrainian(text)
    return _ascii_slug(text, max_length=max_length, word_boundary=True) or "story"
