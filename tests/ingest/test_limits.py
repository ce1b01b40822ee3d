"""What a post may hold: past a limit, the post or the item is refused with the reason."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import pytest

from services.ingest.parsers import count_items, parse
from services.ingest.parsers.base import (
    MAX_HEADLINE,
    MAX_ITEMS,
    MAX_LEDE,
    MAX_NESTING,
    MAX_SUBJECTS,
    MAX_TAGS,
    ItemError,
    MalformedPost,
    ParsedItem,
    PostOverLimit,
)
from shared.text import MAX_HTML_DEPTH, MarkupTooDeep, html_to_text, sanitize_html


def entry(uri: str = "urn:x", **extra: Any) -> dict[str, Any]:
    return {"uri": uri, "headline": "H", "body_text": "B", **extra}


def ninjs(document: object) -> list[ParsedItem | ItemError]:
    return parse("ninjs", json.dumps(document).encode(), default_tz=UTC)


def rss(items: str) -> bytes:
    return f'<rss version="2.0"><channel>{items}</channel></rss>'.encode()


def test_too_many_items_refuse_the_post_before_reading_them() -> None:
    assert len(ninjs([entry(f"urn:{n}") for n in range(MAX_ITEMS)])) == MAX_ITEMS
    with pytest.raises(PostOverLimit) as caught:
        ninjs([entry(f"urn:{n}") for n in range(MAX_ITEMS + 1)])
    assert (
        str(caught.value)
        == f"the post has {MAX_ITEMS + 1} items; at most {MAX_ITEMS} are accepted in one post"
    )
    assert (caught.value.status, caught.value.code) == (422, "unprocessable")
    feed = rss("<item><guid>g</guid><title>t</title><description>d</description></item>" * (MAX_ITEMS + 1))
    for run in (lambda: parse("rss", feed, default_tz=UTC), lambda: count_items("rss", feed)):
        with pytest.raises(PostOverLimit):
            run()


def test_nesting_past_the_limit_is_422_for_json_and_xml() -> None:
    fine = entry(extra=json.loads("[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2)))
    assert isinstance(ninjs(fine)[0], ParsedItem)
    for depth in (MAX_NESTING + 1, 5000):  # ours, and past the interpreter's own
        with pytest.raises(PostOverLimit, match=f"JSON nested deeper than {MAX_NESTING} levels"):
            parse("ninjs", b"[" * depth + b"]" * depth, default_tz=UTC)
    for depth in (MAX_NESTING, 1000):  # ours, and past libxml2's own
        deep = "<x>" * depth + "</x>" * depth
        body = rss(f"<item><guid>g</guid><title>t</title><description>d</description>{deep}</item>")
        with pytest.raises(PostOverLimit, match=f"XML nested deeper than {MAX_NESTING} levels"):
            parse("rss", body, default_tz=UTC)
    with pytest.raises(MalformedPost) as malformed:
        parse("rss", b"<rss><channel>", default_tz=UTC)
    assert malformed.value.status == 400


def test_long_headline_and_lede_refuse_the_item() -> None:
    ok, long_headline, long_lede = ninjs(
        [
            entry("urn:ok", headline="h" * MAX_HEADLINE, description_text="l" * MAX_LEDE),
            entry("urn:h", headline="h" * (MAX_HEADLINE + 1)),
            entry("urn:l", description_text="l" * (MAX_LEDE + 1)),
        ]
    )
    assert isinstance(ok, ParsedItem)
    assert long_headline == ItemError(
        1,
        f"headline is {MAX_HEADLINE + 1} characters long; at most {MAX_HEADLINE} are accepted",
        guid="urn:h",
        field="headline",
    )
    assert isinstance(long_lede, ItemError) and long_lede.field == "lede"


def test_too_many_subjects_or_tags_refuse_the_item() -> None:
    subjects = [{"name": f"t{n}"} for n in range(MAX_SUBJECTS + 1)]
    tags = [{"name": f"t{n}"} for n in range(MAX_TAGS + 2)]  # the first is the section
    repeated = [{"name": "same"}] * MAX_SUBJECTS
    many, too_many_tags, repeats = ninjs(
        [entry("urn:s", subjects=subjects), entry("urn:t", subjects=tags), entry("urn:r", subjects=repeated)]
    )
    assert isinstance(many, ItemError) and many.field == "subjects"
    assert many.reason == f"item has {MAX_SUBJECTS + 1} subjects; at most {MAX_SUBJECTS} are accepted"
    assert isinstance(too_many_tags, ItemError) and too_many_tags.field == "tags"
    assert isinstance(repeats, ParsedItem) and repeats.tags == ["same"]
    categories = "".join(f"<category>c{n}</category>" for n in range(MAX_SUBJECTS + 1))
    [item] = parse(
        "rss",
        rss(f"<item><guid>g</guid><title>t</title><description>d</description>{categories}</item>"),
        default_tz=UTC,
    )
    assert isinstance(item, ItemError) and item.field == "categories"
    column = {
        "guid": "c",
        "headline": "h",
        "body_html": "<p>b</p>",
        "author": {"name": "A"},
        "tags": [f"t{n}" for n in range(MAX_SUBJECTS + 1)],
    }
    [item] = parse("column", json.dumps(column).encode(), default_tz=UTC)
    assert isinstance(item, ItemError) and item.field == "tags"


def test_html_nested_too_deeply_refuses_the_item() -> None:
    fine = "<div>" * MAX_HTML_DEPTH + "x"
    assert html_to_text(fine) == "x"
    assert sanitize_html(fine) == "<div>" * MAX_HTML_DEPTH + "x" + "</div>" * MAX_HTML_DEPTH
    deep = "<div>" * (MAX_HTML_DEPTH + 1) + "x"
    for function in (sanitize_html, html_to_text):
        with pytest.raises(MarkupTooDeep):
            function(deep)
    ok, refused = ninjs([entry("urn:ok", body_html=fine), entry("urn:deep", body_html=deep)])
    assert isinstance(ok, ParsedItem)
    assert refused == ItemError(1, f"HTML nested deeper than {MAX_HTML_DEPTH} levels", guid="urn:deep")


def test_misnested_formatting_is_not_rebuilt_over_and_over() -> None:
    # An HTML5 tree builder reopens every <b> still open at each <p>: output grows with the
    # square of the input. Cleaned from lxml's well-formed tree, it stays proportional.
    hostile = "".join(f"<b id={n}><p>x" for n in range(2000))
    cleaned = sanitize_html(hostile)
    assert len(cleaned) < 10 * len(hostile)
    assert html_to_text(cleaned) == html_to_text(hostile)
