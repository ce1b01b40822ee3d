from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from services.ingest.normalize import (
    TimeError,
    clean_headline,
    clean_text,
    code_value,
    first_paragraph_text,
    html_to_text,
    looks_like_opinion,
    looks_like_section,
    optional_time,
    parse_time,
    positive_int,
    safe_url,
    sanitize_html,
    slugify,
    text_to_html,
)
from shared.text import MAX_ATTRIBUTE_CHARS

KYIV = ZoneInfo("Europe/Kyiv")


# sanitize_html


def test_sanitize_strips_script_style_and_iframe_with_their_content() -> None:
    dirty = (
        "<p>Hi<script>alert('x')</script><style>p{color:red}</style>"
        '<iframe src="https://evil.example">frame text</iframe> there</p>'
    )
    assert sanitize_html(dirty) == "<p>Hi there</p>"


def test_sanitize_strips_event_handlers_and_javascript_urls() -> None:
    dirty = (
        '<p onclick="steal()">x<img src="https://img.example/a.jpg" onerror="alert(1)" alt="A">'
        '<a href="javascript:alert(1)">bad</a><a href="JaVaScRiPt:alert(1)">bad2</a>'
        '<img src="data:image/png;base64,AAAA"></p>'
    )
    assert sanitize_html(dirty) == (
        '<p>x<img src="https://img.example/a.jpg" alt="A">'
        '<a rel="noopener noreferrer">bad</a><a rel="noopener noreferrer">bad2</a><img></p>'
    )


def test_sanitize_keeps_the_safe_subset_and_adds_rel_to_links() -> None:
    clean = (
        "<h2>Sub</h2><blockquote>Quote</blockquote><ul><li>one</li></ul>"
        '<figure><img src="https://img.example/a.jpg" alt="A" width="10" height="5">'
        '<figcaption>Cap</figcaption></figure><table><tbody><tr><td colspan="2">c</td></tr>'
        "</tbody></table><p><strong>s</strong><em>e</em><u>u</u><br><span>sp</span></p><hr>"
    )
    assert sanitize_html(clean) == clean
    assert sanitize_html('<a href="https://e.example/" title="T" target="_blank">x</a>') == (
        '<a href="https://e.example/" title="T" rel="noopener noreferrer">x</a>'
    )


def test_sanitize_drops_unknown_tags_comments_and_attributes_but_keeps_text() -> None:
    assert sanitize_html('<h1 class="c" style="x">Title</h1><!-- c --><p id="i">B</p>') == ("Title<p>B</p>")


def test_sanitize_drops_attribute_values_past_the_limit_and_keeps_the_rest() -> None:
    at_limit = "https://example.com/" + "a" * (MAX_ATTRIBUTE_CHARS - 20)
    too_long = at_limit + "a"
    kept = sanitize_html(f'<img src="{at_limit}" alt="{"º" * MAX_ATTRIBUTE_CHARS}">')
    assert kept == f'<img src="{at_limit}" alt="{"º" * MAX_ATTRIBUTE_CHARS}">'
    dropped = sanitize_html(f'<p><a href="{too_long}" title="{"º" * (MAX_ATTRIBUTE_CHARS + 1)}">link</a></p>')
    assert dropped == '<p><a rel="noopener noreferrer">link</a></p>'


def test_sanitize_keeps_long_text_whole_across_the_pieces_it_is_cleaned_in() -> None:
    text = "".join(f"{n}º&amp; " for n in range(5000))
    assert sanitize_html(f"<p>{text}</p>") == f"<p>{text}</p>"


def test_sanitize_normalises_text_too() -> None:
    assert sanitize_html("<p>Cafe\u0301\x00\x1b</p>") == "<p>Café</p>"


# html_to_text and friends


def test_html_to_text_separates_blocks_and_collapses_whitespace() -> None:
    html = (
        "<p>Hello\n   world &amp; <b>bold</b></p>\n<p>Second<br>line&nbsp;&nbsp;x</p>"
        "<ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr></table>"
        "<script>alert(1)</script><a title='a>b' href='x'>link</a>"
    )
    assert html_to_text(html) == "Hello world & bold\n\nSecond\nline x\n\none\n\ntwo\n\na b\n\nlink"


def test_html_to_text_of_plain_text_is_the_text() -> None:
    assert html_to_text("  5 &lt; 6  ") == "5 < 6"
    assert html_to_text("") == ""


def test_first_paragraph_text() -> None:
    assert first_paragraph_text("<p></p><p>First <i>one</i>.</p><p>Second.</p>") == "First one."
    assert first_paragraph_text("<p> </p>") is None


def test_text_to_html_escapes_and_splits_paragraphs() -> None:
    assert text_to_html("a <b> & c\nline2\n\n\n  para2\n") == (
        "<p>a &lt;b&gt; &amp; c<br>line2</p><p>para2</p>"
    )


# clean_text, clean_headline


def test_clean_text_applies_nfc_and_removes_control_characters() -> None:
    assert clean_text("Cafe\u0301 \u0418\u0306") == "Caf\u00e9 \u0419"  # decomposed -> NFC
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x85f\x9fg") == "abcdefg"
    assert clean_text("keep\ttabs\nand\r\nlines\rhere") == "keep\ttabs\nand\nlines\nhere"
    assert clean_text("lone \ud800surrogate") == "lone surrogate"


def test_clean_headline_collapses_all_whitespace() -> None:
    assert clean_headline("  Kyiv\u00a0 metro\n\tadds\x00 a line  ") == "Kyiv metro adds a line"


# slugify


def test_slugify_transliterates_ukrainian_by_the_national_system() -> None:
    assert slugify("Київ — столиця України") == "kyiv-stolytsia-ukrainy"
    assert slugify("Ґанок, Єнот, Їжак, Юля, Яма, Йосип, Згорани, м'ясо") == (
        "ganok-yenot-yizhak-yulia-yama-yosyp-zghorany-miaso"
    )


def test_slugify_other_scripts_and_punctuation() -> None:
    assert slugify("Москва и Газпром") == "moskva-i-gazprom"
    assert slugify("Chinese citizens are fighting for Russia — Vitaly Portnikov's column") == (
        "chinese-citizens-are-fighting-for-russia-vitaly-portnikovs-column"
    )
    assert slugify("Orbán becomes key amplifier") == "orban-becomes-key-amplifier"


def test_slugify_is_never_empty_and_respects_max_length() -> None:
    assert slugify("") == "story"
    assert slugify("!!! ???") == "story"
    assert slugify("one two three four", max_length=10) == "one-two"
    assert len(slugify("word " * 100)) <= 80


# parse_time


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-04-09T10:52:00+03:00", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("2025-04-09T07:52:00Z", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("2025-04-09t07:52:00z", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("2025-04-09T07:52:00.123456789Z", datetime(2025, 4, 9, 7, 52, 0, 123456, tzinfo=UTC)),
        ("20250409T075200Z", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("Wed, 09 Apr 2025 10:52:00 +0300", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("Wed, 9 Apr 2025 07:52 GMT", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("09 Apr 2025 02:52:00 EST", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
        ("Wed, 09 Apr 2025 07:52:00 -0000", datetime(2025, 4, 9, 7, 52, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_iso_rfc3339_and_rfc822(value: str, expected: datetime) -> None:
    parsed = parse_time(value, default_tz=KYIV, field="versioncreated")
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_parse_time_reads_naive_times_in_the_default_zone() -> None:
    # Kyiv is UTC+3 in summer (EEST) and UTC+2 in winter (EET).
    assert parse_time("2025-04-09T10:52:00", default_tz=KYIV, field="t") == datetime(
        2025, 4, 9, 7, 52, tzinfo=UTC
    )
    assert parse_time("2025-01-15 12:00", default_tz=KYIV, field="t") == datetime(
        2025, 1, 15, 10, 0, tzinfo=UTC
    )
    assert parse_time("Wed, 15 Jan 2025 12:00:00", default_tz=KYIV, field="t") == datetime(
        2025, 1, 15, 10, 0, tzinfo=UTC
    )
    assert parse_time("2025-04-09", default_tz=UTC, field="t") == datetime(2025, 4, 9, tzinfo=UTC)


def test_parse_time_accepts_datetimes() -> None:
    aware = datetime(2025, 4, 9, 10, 52, tzinfo=timezone(timedelta(hours=3)))
    assert parse_time(aware, default_tz=UTC, field="t") == datetime(2025, 4, 9, 7, 52, tzinfo=UTC)


@pytest.mark.parametrize("value", ["yesterday", "", "   ", "2025-13-40T99:00:00Z", 1744185120, None])
def test_parse_time_raises_time_error_naming_the_field(value: object) -> None:
    with pytest.raises(TimeError) as caught:
        parse_time(value, default_tz=UTC, field="pubDate")
    assert caught.value.field == "pubDate"
    assert caught.value.value == value
    assert caught.value.reason.startswith("unparseable time in pubDate")


def test_parse_time_refuses_times_that_overflow_in_utc() -> None:
    with pytest.raises(TimeError):
        parse_time("0001-01-01T00:00:00+05:00", default_tz=UTC, field="t")


def test_optional_time_treats_missing_as_none() -> None:
    assert optional_time(None, default_tz=UTC, field="t") is None
    assert optional_time(" ", default_tz=UTC, field="t") is None
    with pytest.raises(TimeError):
        optional_time("soon", default_tz=UTC, field="t")


# small helpers


def test_positive_int() -> None:
    assert positive_int("12") == 12
    assert positive_int(7) == 7
    assert positive_int(281.0) == 281
    assert [positive_int(v) for v in ("1.2", "-3", "²", True, None, float("nan"), -1)] == [None] * 7


def test_safe_url() -> None:
    assert safe_url(" https://img.example/a.jpg ") == "https://img.example/a.jpg"
    assert safe_url("HTTP://img.example/a.jpg") == "HTTP://img.example/a.jpg"
    bad = ("javascript:alert(1)", "data:image/png;base64,AA", "/relative.jpg", "https://", 3)
    assert [safe_url(v) for v in bad] == [None] * 5


def test_classification_helpers() -> None:
    assert looks_like_opinion(["http://cv.iptc.org/newscodes/genre/Opinion"])
    assert looks_like_opinion([None, "Commentary"])
    assert not looks_like_opinion(["genre:Interview", None])
    assert looks_like_section(["https://example.org/sections/world"])
    assert not looks_like_section(["medtop", None])
    assert code_value("genre:Opinion") == "Opinion"
    assert code_value("http://cv.iptc.org/newscodes/genre/Opinion/") == "Opinion"
