"""Every parser and text helper takes time linear in its input, whatever markup it is fed.

Generated hostile markup (unclosed comments and tags, entities, scripts, misnested and deep
nesting) is repeated to 16 KB and to 256 KB: sixteen times the size may take at most 32 times
as long (quadratic work would take 256 times). Times are the thread's CPU time, the least of a
few runs, so that other processes on a busy machine do not count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC
from types import SimpleNamespace
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.ingest import service
from services.ingest.parsers import parse
from services.ingest.parsers.base import MalformedPost
from shared.text import MarkupTooDeep, clean_text, html_to_text, looks_like_html, sanitize_html, text_to_html

SMALL = 16 * 1024
LARGE = 256 * 1024
MAX_RATIO = 32
# Below this a run is too short to time: a 256 KB run ~32 times it is still well under any
# quadratic blow-up (those take whole seconds at 256 KB).
FLOOR_SECONDS = 0.002
REPEATS = 3

PIECES = [
    "<a",
    "<a>",
    "</a>",
    "<!--",
    "-->",
    "<div>",
    "</div>",
    "<b id=1>",
    "<i class=x>",
    "</i>",
    "<p>",
    "</p>",
    "x",
    " ",
    "&amp;",
    "&#x41;",
    "&",
    "&nbsp;",
    "<script>",
    "</script>",
    "<style>",
    "<![CDATA[",
    "]]>",
    "<",
    ">",
    '"',
    "'",
    "=",
    "<table>",
    "<td>",
    "<li>",
    "<svg>",
    "<math>",
    "</",
    "<?",
    "<!DOCTYPE",
    "\n",
    "<br>",
    "<img src=x onerror=alert(1)>",
    "<center>",
    "<object>",
]
motifs = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join) | st.text(
    min_size=1, max_size=8
)
# The cases and the worst found so far, always run; Hypothesis adds its own.
# '\x06hº': signs such as 'º' cost nh3 time in the square of a text node's length.
HOSTILE_EXAMPLES = ["<a", "<!--", "<div>", "<b id=1><p>x", "&amp;", "\x06hº"]


def repeated(motif: str, size: int) -> str:
    return motif * max(1, size // len(motif.encode()))


def cpu_time(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best


def assert_linear(build: Callable[[int], Callable[[], object]], what: str) -> None:
    small, large = build(SMALL), build(LARGE)
    large()  # warm-up: caches, thread-local parsers
    t_small, t_large = cpu_time(small), cpu_time(large)
    assert t_large <= MAX_RATIO * max(t_small, FLOOR_SECONDS), (
        f"{what}: {t_small * 1000:.1f} ms at 16 KB, {t_large * 1000:.1f} ms at 256 KB"
    )


def quietly(run: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        try:
            return run()
        except (MalformedPost, MarkupTooDeep) as error:  # refusing is an answer too
            return error

    return call


# What each wire format carries the motif in: its headline and its body, as HTML.
def ninjs(text: str) -> bytes:
    return json.dumps(
        {
            "uri": "urn:h",
            "headlines": [{"value": text, "contenttype": "text/html"}],
            "bodies": [{"value": text}],
        }
    ).encode()


def column(text: str) -> bytes:
    return json.dumps({"guid": "c", "headline": text, "body_html": text, "author": {"name": "A"}}).encode()


def newsml(text: str) -> bytes:
    return (
        '<newsItem xmlns="http://iptc.org/std/nar/2006-10-01/" guid="g" version="1"><contentMeta>'
        f"<headline>{escape(text)}</headline><description>{escape(text)}</description></contentMeta>"
        f'<contentSet><inlineData contenttype="text/html">{escape(text)}</inlineData></contentSet></newsItem>'
    ).encode()


def rss(text: str) -> bytes:
    return (
        '<rss version="2.0"><channel><item><guid>g</guid>'
        f"<title>{escape(text)}</title><description>{escape(text)}</description></item></channel></rss>"
    ).encode()


def atom(text: str) -> bytes:
    return (
        '<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>g</id>'
        f'<title type="html">{escape(text)}</title><summary type="html">{escape(text)}</summary>'
        f'<content type="html">{escape(text)}</content></entry></feed>'
    ).encode()


FORMATS: dict[str, tuple[Callable[[str], bytes], str]] = {
    "ninjs": (ninjs, "application/ninjs+json"),
    "column": (column, "application/vnd.newsroom.column+json"),
    "newsml-g2": (newsml, "application/vnd.iptc.g2.newsitem+xml"),
    "rss": (rss, "application/rss+xml"),
    "atom": (atom, "application/atom+xml"),
}
HELPERS: dict[str, Callable[[str], object]] = {
    "sanitize_html": sanitize_html,
    "html_to_text": html_to_text,
    "looks_like_html": looks_like_html,
    "text_to_html": text_to_html,
    "clean_text": clean_text,
}
CHECKS = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def hostile(test: Callable[..., None]) -> Callable[..., None]:
    for motif in HOSTILE_EXAMPLES:
        test = example(motif=motif)(test)
    return CHECKS(given(motif=motifs)(test))


@pytest.mark.parametrize("fmt", list(FORMATS))
@hostile
def test_every_parser_is_linear(fmt: str, motif: str) -> None:
    document, content_type = FORMATS[fmt]
    source = SimpleNamespace(format=fmt, timezone="UTC")

    def worker(size: int) -> Callable[[], object]:
        body = document(repeated(motif, size))
        return quietly(lambda: parse(fmt, body, default_tz=UTC))

    def api(size: int) -> Callable[[], object]:
        body = document(repeated(motif, size))
        return lambda: service.check_post(source=source, content_type=content_type, body=body)  # type: ignore[arg-type]

    assert_linear(worker, f"{fmt} parser with {motif!r}")
    assert_linear(api, f"{fmt} post check with {motif!r}")


@pytest.mark.parametrize("helper", list(HELPERS))
@hostile
def test_every_text_helper_is_linear(helper: str, motif: str) -> None:
    function = HELPERS[helper]

    def run(size: int) -> Callable[[], object]:
        text = repeated(motif, size)
        return quietly(lambda: function(text))

    assert_linear(run, f"{helper} with {motif!r}")


@pytest.mark.parametrize("fmt", ["ninjs", "newsml-g2", "rss"])
@CHECKS
@given(tag=st.sampled_from(["div", "b", "a", "table", "x"]), attributes=st.booleans())
def test_deep_nesting_is_linear(fmt: str, tag: str, attributes: bool) -> None:
    opening = f'<{tag} id="1">' if attributes else f"<{tag}>"

    def nested(size: int) -> str:
        count = size // (2 * len(opening) + 1)
        return opening * count + f"</{tag}>" * count

    def document(size: int) -> bytes:
        if fmt == "ninjs":  # HTML nesting in a body, then JSON nesting
            item = json.dumps({"uri": "u", "headline": "h", "body_html": nested(size // 2)})
            depth = size // 4
            return f"[{item},{'[' * depth}{']' * depth}]".encode()
        if fmt == "rss":  # HTML nesting in a description
            return rss(nested(size))
        xhtml = f'<inlineXML><html xmlns="http://www.w3.org/1999/xhtml"><body>{nested(size)}</body></html></inlineXML>'
        return newsml("x").replace(b"<contentSet>", b"<contentSet>" + xhtml.encode())  # XML nesting

    def worker(size: int) -> Callable[[], object]:
        body = document(size)
        return quietly(lambda: parse(fmt, body, default_tz=UTC))

    assert_linear(worker, f"{fmt} nested {opening}")


@pytest.mark.parametrize(
    "markup",
    [
        '<a title="{}">x</a>',
        '<img alt="{}" src="https://example.com/x.jpg">',
        '<a href="https://example.com/{}">x</a>',
    ],
)
@pytest.mark.parametrize("sign", ["º", "°", "\xa0", "&amp;", "x"])
def test_long_attribute_values_are_linear(markup: str, sign: str) -> None:
    def run(size: int) -> Callable[[], object]:
        html = markup.format(sign * (size // len(sign.encode())))
        return lambda: sanitize_html(html)

    assert_linear(run, f"{markup} holding {sign!r}")
