"""Feeds and the news sitemap, rendered from in-memory stories and checked by real parsers."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser  # type: ignore[import-untyped]
import pytest
from lxml import etree  # type: ignore[import-untyped]

from services.syndicate.feeds import (
    EMPTY_FEED_UPDATED,
    FeedFormat,
    FeedKey,
    RenderedFeed,
    feed_keys_for,
    parse_feed_name,
    render_feed,
    render_news_sitemap,
)
from shared.config import Settings
from shared.models import Story, StoryLabel, StoryTag
from tests.helpers.support import jsonfeed_errors

DATA = Path(__file__).resolve().parent.parent / "data"
SITE = "https://news.example.com"
HUB = "https://hub.example.com/"
ATOM = "{http://www.w3.org/2005/Atom}"
NEWS = "{http://www.google.com/schemas/sitemap-news/0.9}"
SITEMAP = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
JSONFEED_VERSION = "https://jsonfeed.org/version/1.1"
FORMATS: tuple[FeedFormat, ...] = ("rss", "atom", "json")
XML_FORMATS: tuple[FeedFormat, ...] = ("rss", "atom")
T0 = datetime(2025, 7, 18, 16, 16, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return Settings(site_url=SITE + "/", site_title="Newsroom", websub_hubs=HUB)


def make_column(**overrides: Any) -> Story:
    """An opinion column with a picture, Cyrillic, markup characters and emoji."""
    fields: dict[str, Any] = {
        "id": 1,
        "slug": "kyiv-column",
        "revision": 2,
        "headline": "Київ & <Львів>: 🎉 a column",
        "lede": "Лід: a < b & c 🎉",
        "body_html": "<p>Тіло статті &amp; <strong>більше</strong> 🎉</p><p>a &lt; b</p>",
        "body_text": "Тіло статті & більше 🎉 a < b",
        "author_name": "Олена Петренко",
        "author_slug": "olena-petrenko",
        "byline": "By Олена Петренко",
        "section": "World",
        "language": "uk",
        "published_at": T0,
        "tags": [
            StoryTag(slug="kyiv", name="Київ"),
            StoryTag(slug="war-and-peace", name="War & Peace"),
        ],
        "labels": [StoryLabel(label="opinion")],
        "picture": {
            "url": "https://cdn.example.com/pictures/kyiv.jpg",
            "media_type": "image/jpeg",
            "width": 1200,
            "height": 800,
            "size": 54321,
            "caption": "Київ at dawn & dusk",
            "credit": "Photo: AP",
        },
    }
    fields.update(overrides)
    return Story(**fields)


def make_stories() -> list[Story]:
    """Three stories, newest first by published_at."""
    breaking = Story(
        id=3,
        slug="breaking-news",
        revision=1,
        headline="Breaking: <script>alert(1)</script> & more",
        lede=None,
        body_html="<p>" + "Слово " * 120 + "</p>",
        body_text="Слово " * 120,
        author_name=None,
        author_slug=None,
        byline="Wire staff",
        section="Economy",
        language="en",
        published_at=T0 + timedelta(hours=2),
        tags=[],
        labels=[StoryLabel(label="breaking"), StoryLabel(label="exclusive")],
        picture={"url": "/media/chart.png"},
    )
    anonymous = Story(
        id=2,
        slug="anonymous",
        revision=1,
        headline="No author at all",
        lede="Plain lede.",
        body_html="<p>Body.</p>",
        body_text="Body.",
        published_at=T0 + timedelta(hours=1),
        tags=[],
        labels=[],
        picture=None,
    )
    return [breaking, anonymous, make_column()]


def story_url(slug: str) -> str:
    return f"{SITE}/stories/{slug}"


def parse_xml(feed: RenderedFeed) -> Any:
    return etree.fromstring(feed.body)


def render_all(key: FeedKey, stories: Sequence[Story], settings: Settings) -> dict[str, RenderedFeed]:
    return {fmt: render_feed(key, fmt, stories, settings=settings) for fmt in FORMATS}


# --- names and keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("all", FeedKey("all")),
        ("section/world", FeedKey("section", "world")),
        ("tag/war-and-peace", FeedKey("tag", "war-and-peace")),
        ("author/olena-petrenko", FeedKey("author", "olena-petrenko")),
        ("label/exclusive", FeedKey("label", "exclusive")),
        ("label/breaking", FeedKey("label", "breaking")),
        ("label/opinion", FeedKey("label", "opinion")),
        ("label/updated", FeedKey("label", "updated")),
    ],
)
def test_parse_feed_name_round_trips(name: str, key: FeedKey) -> None:
    assert parse_feed_name(name) == key
    assert key.name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "everything",
        "all/world",
        "section",
        "section/",
        "section/World",
        "section/a/b",
        "section/../x",
        "tag/ spaces",
        "label/funny",
        "genre/opinion",
        "/section/world",
    ],
)
def test_parse_feed_name_refuses_what_names_no_feed(name: str) -> None:
    assert parse_feed_name(name) is None


def test_feed_key_refuses_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="feed kind"):
        FeedKey("all", "world")
    with pytest.raises(ValueError, match="feed kind"):
        FeedKey("section")
    with pytest.raises(ValueError, match="unknown label"):
        FeedKey("label", "funny")


def test_feed_keys_for_names_every_feed_of_a_story() -> None:
    assert feed_keys_for(make_column()) == [
        FeedKey("all"),
        FeedKey("section", "world"),
        FeedKey("tag", "kyiv"),
        FeedKey("tag", "war-and-peace"),
        FeedKey("author", "olena-petrenko"),
        FeedKey("label", "opinion"),
    ]
    bare = Story(id=9, slug="bare", headline="h", body_html="", tags=[], labels=[])
    assert feed_keys_for(bare) == [FeedKey("all")]
    spaced = make_column(section="Culture & Arts")
    assert FeedKey("section", "culture-arts") in feed_keys_for(spaced)


# --- RSS -------------------------------------------------------------------------------------


def test_rss_parses_cleanly_with_entries_links_and_enclosures(settings: Settings) -> None:
    feed = render_feed(FeedKey("all"), "rss", make_stories(), settings=settings)
    assert feed.media_type == "application/rss+xml; charset=utf-8"
    parsed = feedparser.parse(feed.body)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "rss20"
    assert parsed.feed.title == "Newsroom"
    assert parsed.feed.link == SITE + "/"
    assert [entry.id for entry in parsed.entries] == [
        story_url("breaking-news"),
        story_url("anonymous"),
        story_url("kyiv-column"),
    ]
    column = parsed.entries[2]
    assert column.link == story_url("kyiv-column")
    assert column.title == "Київ & <Львів>: 🎉 a column"
    # RSS descriptions are HTML: the plain-text lede is escaped, not read as markup.
    assert column.summary_detail.type == "text/html"
    assert html.unescape(column.summary) == "Лід: a < b & c 🎉"
    assert column.content[0].value == make_column().body_html
    assert column.author == "Олена Петренко"
    assert [tag.term for tag in column.tags] == ["World", "Київ", "War & Peace", "Opinion"]
    assert column.published_parsed[:6] == (2025, 7, 18, 16, 16, 0)
    assert column.enclosures == [
        {
            "href": "https://cdn.example.com/pictures/kyiv.jpg",
            "length": "54321",
            "type": "image/jpeg",
        }
    ]
    assert column.media_content[0]["url"] == "https://cdn.example.com/pictures/kyiv.jpg"
    assert column.media_content[0]["medium"] == "image"
    # A relative picture URL is made absolute; an unknown size is 0, as RSS asks.
    breaking = parsed.entries[0]
    assert breaking.enclosures[0]["href"] == SITE + "/media/chart.png"
    assert breaking.enclosures[0]["type"] == "image/png"
    assert breaking.enclosures[0]["length"] == "0"
    assert breaking.author == "Wire staff"
    assert breaking.summary.endswith("…")
    assert parsed.entries[1].author == "Newsroom"


def test_rss_document_has_self_and_hub_links_and_media_outside_groups(settings: Settings) -> None:
    root = parse_xml(render_feed(FeedKey("section", "world"), "rss", make_stories(), settings=settings))
    channel = root.find("channel")
    links = [(link.get("rel"), link.get("href")) for link in channel.findall(f"{ATOM}link")]
    assert links == [("self", f"{SITE}/feeds/section/world.rss"), ("hub", HUB)]
    assert channel.findtext("link") == SITE + "/"
    assert channel.findtext("title") == "Newsroom — World"
    guids = channel.findall("item/guid")
    assert [guid.get("isPermaLink") for guid in guids] == ["true"] * 3
    assert guids[2].text == story_url("kyiv-column")
    media = "{http://search.yahoo.com/mrss/}"
    assert not root.findall(f".//{media}group")
    contents = root.findall(f".//item/{media}content")
    assert len(contents) == 2
    column_media = contents[1]
    assert column_media.get("fileSize") == "54321"
    assert (column_media.get("width"), column_media.get("height")) == ("1200", "800")
    # The encoded content is the story's HTML, escaped once as XML text.
    encoded = root.findall(".//item/{http://purl.org/rss/1.0/modules/content/}encoded")
    assert encoded[2].text == make_column().body_html


# --- Atom ------------------------------------------------------------------------------------


def test_atom_parses_cleanly_with_ids_authors_and_times(settings: Settings) -> None:
    feed = render_feed(FeedKey("all"), "atom", make_stories(), settings=settings)
    assert feed.media_type == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(feed.body)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert [entry.id for entry in parsed.entries] == [
        story_url("breaking-news"),
        story_url("anonymous"),
        story_url("kyiv-column"),
    ]
    column = parsed.entries[2]
    assert column.link == story_url("kyiv-column")
    assert column.title == "Київ & <Львів>: 🎉 a column"
    assert column.content[0].type == "text/html"
    assert column.content[0].value == make_column().body_html
    assert column.summary == "Лід: a < b & c 🎉"
    assert [entry.author for entry in parsed.entries] == [
        "Wire staff",
        "Newsroom",
        "Олена Петренко",
    ]
    assert column.published_parsed[:6] == (2025, 7, 18, 16, 16, 0)
    assert column.updated_parsed[:6] == (2025, 7, 18, 16, 16, 0)
    assert parsed.feed.updated_parsed[:6] == (2025, 7, 18, 18, 16, 0)
    assert feed.last_modified == T0 + timedelta(hours=2)
    assert {tag.term for tag in column.tags} == {"world", "kyiv", "war-and-peace", "opinion"}


def test_atom_enclosure_link_keeps_rel_type_and_length(settings: Settings) -> None:
    root = parse_xml(render_feed(FeedKey("all"), "atom", make_stories(), settings=settings))
    entries = root.findall(f"{ATOM}entry")
    column_links = [dict(link.attrib) for link in entries[2].findall(f"{ATOM}link")]
    assert column_links == [
        {"href": story_url("kyiv-column"), "rel": "alternate", "type": "text/html"},
        {
            "href": "https://cdn.example.com/pictures/kyiv.jpg",
            "rel": "enclosure",
            "type": "image/jpeg",
            "length": "54321",
        },
    ]
    unknown_size = [dict(link.attrib) for link in entries[0].findall(f"{ATOM}link")][1]
    assert unknown_size == {
        "href": SITE + "/media/chart.png",
        "rel": "enclosure",
        "type": "image/png",
        "length": "0",
    }
    assert not entries[1].findall(f"{ATOM}link[@rel='enclosure']")
    # Exactly one alternate per entry: a broken enclosure would have made a second one.
    for entry in entries:
        alternates = [
            link for link in entry.findall(f"{ATOM}link") if link.get("rel", "alternate") == "alternate"
        ]
        assert len(alternates) == 1
    feed_links = [(link.get("rel"), link.get("href")) for link in root.findall(f"{ATOM}link")]
    assert feed_links == [
        ("self", f"{SITE}/feeds/all.atom"),
        ("hub", HUB),
        ("alternate", SITE + "/"),
    ]


def test_an_update_keeps_the_atom_id_and_moves_updated(settings: Settings) -> None:
    key = FeedKey("tag", "kyiv")
    before = render_feed(key, "atom", [make_column()], settings=settings)
    edited_at = T0 + timedelta(days=1, microseconds=5)
    updated_story = make_column(
        revision=3,
        headline="Київ & <Львів>: 🎉 a column (updated)",
        updated_at=edited_at,
        labels=[StoryLabel(label="opinion"), StoryLabel(label="updated")],
    )
    after = render_feed(key, "atom", [updated_story], settings=settings)
    old, new = feedparser.parse(before.body).entries[0], feedparser.parse(after.body).entries[0]
    assert new.id == old.id == story_url("kyiv-column")
    assert new.published_parsed == old.published_parsed
    assert new.updated_parsed[:6] == (2025, 7, 19, 16, 16, 0)
    assert new.updated_parsed != old.updated_parsed
    assert after.etag != before.etag
    assert after.last_modified == T0 + timedelta(days=1)
    assert before.last_modified == T0
    json_item = json.loads(render_feed(key, "json", [updated_story], settings=settings).body)["items"][0]
    assert json_item["id"] == story_url("kyiv-column")
    assert json_item["date_modified"] == "2025-07-19T16:16:00Z"
    assert parse_feed_name(key.name) == key
    assert feedparser.parse(after.body).feed.title == "Newsroom — Київ"


# --- JSON Feed -------------------------------------------------------------------------------


def test_json_feed_matches_the_1_1_schema(settings: Settings) -> None:
    feed = render_feed(FeedKey("label", "opinion"), "json", make_stories(), settings=settings)
    assert feed.media_type == "application/feed+json; charset=utf-8"
    document = json.loads(feed.body.decode("utf-8"))
    assert jsonfeed_errors(document) == []
    assert document["version"] == JSONFEED_VERSION
    assert document["title"] == "Newsroom — Opinion"
    assert document["home_page_url"] == SITE + "/"
    assert document["feed_url"] == f"{SITE}/feeds/label/opinion.json"
    assert document["hubs"] == [{"type": "WebSub", "url": HUB}]
    column = document["items"][2]
    assert column == {
        "id": story_url("kyiv-column"),
        "url": story_url("kyiv-column"),
        "title": "Київ & <Львів>: 🎉 a column",
        "content_html": make_column().body_html,
        "summary": "Лід: a < b & c 🎉",
        "image": "https://cdn.example.com/pictures/kyiv.jpg",
        "date_published": "2025-07-18T16:16:00Z",
        "authors": [{"name": "Олена Петренко"}],
        "tags": ["World", "Київ", "War & Peace", "Opinion"],
        "language": "uk",
    }
    assert document["items"][1]["authors"] == [{"name": "Newsroom"}]
    assert "image" not in document["items"][1]
    # Text stays text: no ASCII escapes.
    assert "Київ".encode() in feed.body


# --- every format ----------------------------------------------------------------------------


def test_identical_input_gives_identical_bytes_and_etag(settings: Settings) -> None:
    first = render_all(FeedKey("all"), make_stories(), settings)
    second = render_all(FeedKey("all"), make_stories(), settings)
    for fmt in FORMATS:
        assert first[fmt].body == second[fmt].body
        assert first[fmt].etag == second[fmt].etag
        assert first[fmt].last_modified == second[fmt].last_modified
        etag = first[fmt].etag
        assert etag.startswith('"')
        assert etag.endswith('"')
    assert len({feed.etag for feed in first.values()}) == 3


@pytest.mark.parametrize("key", [FeedKey("all"), FeedKey("section", "world"), FeedKey("author", "x")])
def test_an_empty_feed_is_valid_and_stable(key: FeedKey, settings: Settings) -> None:
    feeds = render_all(key, [], settings)
    for fmt in XML_FORMATS:
        parsed = feedparser.parse(feeds[fmt].body)
        assert parsed.bozo == 0, parsed.get("bozo_exception")
        assert parsed.entries == []
        assert feeds[fmt].last_modified == EMPTY_FEED_UPDATED
    atom = parse_xml(feeds["atom"])
    assert atom.findtext(f"{ATOM}updated") == "2000-01-01T00:00:00+00:00"
    assert atom.find(f"{ATOM}author/{ATOM}name").text == "Newsroom"
    document = json.loads(feeds["json"].body)
    assert jsonfeed_errors(document) == []
    assert document["items"] == []
    assert render_all(key, [], settings)["atom"].body == feeds["atom"].body


def test_a_feed_in_one_language_says_so(settings: Settings) -> None:
    key = FeedKey("tag", "kyiv")
    feeds = render_all(key, [make_column()], settings)
    assert parse_xml(feeds["rss"]).findtext("channel/language") == "uk"
    assert parse_xml(feeds["atom"]).get("{http://www.w3.org/XML/1998/namespace}lang") == "uk"
    assert json.loads(feeds["json"].body)["language"] == "uk"
    mixed = render_all(FeedKey("all"), make_stories(), settings)
    assert parse_xml(mixed["rss"]).find("channel/language") is None
    assert "language" not in json.loads(mixed["json"].body)


def test_text_that_xml_cannot_carry_is_dropped(settings: Settings) -> None:
    story = make_column(headline="Bad\x0b control\x00 and \x85 C1", body_html="<p>x\x1f</p>")
    for fmt in XML_FORMATS:
        parsed = feedparser.parse(render_feed(FeedKey("all"), fmt, [story], settings=settings).body)
        assert parsed.bozo == 0
        assert parsed.entries[0].title == "Bad control and  C1"


def test_the_feed_holds_at_most_feed_size_stories(settings: Settings) -> None:
    small = Settings(site_url=SITE, websub_hubs="", feed_size=2)
    feed = render_feed(FeedKey("all"), "json", make_stories(), settings=small)
    document = json.loads(feed.body)
    assert len(document["items"]) == 2
    assert "hubs" not in document
    rss = parse_xml(render_feed(FeedKey("all"), "rss", make_stories(), settings=small))
    assert [link.get("rel") for link in rss.find("channel").findall(f"{ATOM}link")] == ["self"]


def test_fifty_entries_render_in_a_few_milliseconds(settings: Settings) -> None:
    stories = [
        make_column(id=n, slug=f"story-{n}", published_at=T0 - timedelta(minutes=n)) for n in range(50)
    ]
    for fmt in FORMATS:
        render_feed(FeedKey("all"), fmt, stories, settings=settings)
        best = min(_timed(fmt, stories, settings) for _ in range(5))
        # Generous against slow CI machines; about 3 ms here.
        assert best < 0.05, (fmt, best)


def _timed(fmt: FeedFormat, stories: Sequence[Story], settings: Settings) -> float:
    started = time.perf_counter()
    render_feed(FeedKey("all"), fmt, stories, settings=settings)
    return time.perf_counter() - started


# --- news sitemap ----------------------------------------------------------------------------


def test_news_sitemap_has_the_news_elements(settings: Settings) -> None:
    body = render_news_sitemap(make_stories(), settings=settings)
    assert body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(body)
    assert root.tag == f"{SITEMAP}urlset"
    urls = root.findall(f"{SITEMAP}url")
    assert [url.findtext(f"{SITEMAP}loc") for url in urls] == [
        story_url("breaking-news"),
        story_url("anonymous"),
        story_url("kyiv-column"),
    ]
    column = urls[2].find(f"{NEWS}news")
    assert column.findtext(f"{NEWS}publication/{NEWS}name") == "Newsroom"
    assert column.findtext(f"{NEWS}publication/{NEWS}language") == "uk"
    assert column.findtext(f"{NEWS}publication_date") == "2025-07-18T16:16:00Z"
    assert column.findtext(f"{NEWS}title") == "Київ & <Львів>: 🎉 a column"
    # A story without a language is "und" (undetermined), still an ISO 639 code.
    assert urls[1].findtext(f"{NEWS}news/{NEWS}publication/{NEWS}language") == "und"
    assert render_news_sitemap(make_stories(), settings=settings) == body


def test_an_empty_news_sitemap_is_well_formed(settings: Settings) -> None:
    root = etree.fromstring(render_news_sitemap([], settings=settings))
    assert root.tag == f"{SITEMAP}urlset"
    assert len(root) == 0
