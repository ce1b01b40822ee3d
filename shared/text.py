"""Text every service needs: cleaning, HTML sanitising (nh3), plain text, slugs."""

from __future__ import annotations

import html
import re
import unicodedata

import nh3
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
    *("p", "br", "hr", "span", "div", "blockquote", "figure", "figcaption", "img"),
    *("a", "b", "strong", "i", "em", "u", "s", "sub", "sup", "small", "mark", "q", "cite", "abbr"),
    *("code", "pre", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd"),
    *("table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td"),
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


def sanitize_html(html_text: str) -> str:
    """Reduce wire HTML to the safe subset stories are stored and shown in."""
    return nh3.clean(
        clean_text(html_text),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        clean_content_tags=_DROP_WITH_CONTENT,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


_BLOCK_TAGS = frozenset(
    {
        *("p", "div", "pre", "hr", "blockquote", "figure", "figcaption"),
        *("h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd"),
        *("table", "caption", "thead", "tbody", "tfoot", "tr"),
        *("section", "article", "header", "footer", "aside"),
    }
)
_DROPPED_RE = re.compile(
    r"<(script|style|template|noscript|iframe|svg|math)\b.*?</\1\s*>|<!--.*?-->",
    re.IGNORECASE | re.DOTALL,
)
# A tag, capturing its name, honouring quoted attribute values that may contain '>'.
_TAG_RE = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)\b[^\"'>]*(?:(?:\"[^\"]*\"|'[^']*')[^\"'>]*)*>")
_TAG_TEXT = {name: "\n\n" for name in _BLOCK_TAGS} | {"br": "\n", "td": " ", "th": " "}
_TAG_TEXT |= {name.upper(): text for name, text in _TAG_TEXT.items()}  # saves a lower() per tag
_DROPPED_HINTS = ("<!--", "<script", "<style", "<template", "<noscript", "<iframe", "<svg", "<math")


def html_to_text(html_text: str) -> str:
    """Plain text of an HTML fragment: paragraphs separated by a blank line."""
    lowered = html_text.lower()
    if any(hint in lowered for hint in _DROPPED_HINTS):  # rare once sanitised; skip the regex
        html_text = _DROPPED_RE.sub("", html_text)
    # Source line breaks are plain whitespace in HTML; only tags make breaks.
    parts = _TAG_RE.split(" ".join(html_text.split()))
    tag_text = _TAG_TEXT.get
    parts[1::2] = [tag_text(name, "") for name in parts[1::2]]
    text = html.unescape("".join(parts)).replace("\xa0", " ")
    # Plain str.replace loops: several times faster than regular expressions here.
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return clean_text(text.strip())


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
