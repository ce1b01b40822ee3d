"""Reader pages rendered from in-memory stories (no database): the seed's lists and story page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html import unescape
from typing import Any

from services.syndicate import pages
from shared.config import Settings
from shared.models import Story, StoryLabel, StoryTag
from tests.helpers.support import text_of

CSP = (
    "default-src 'none'; img-src * data:; style-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADLINE = "Chinese citizens are fighting for Russia — Vitaly Portnikov's column"
LEDE = (
    "Ukrainian forces have captured two Chinese nationals who were fighting for the "
    "Russian army in the Donetsk region"
)
DISCLAIMER = "The editorial staff does not always share the opinions expressed by the blog authors."


def settings() -> Settings:
    return Settings(
        site_url="https://news.example.org/", site_title="Espreso. Global", timezone="Europe/Kyiv"
    )


def make_story(
    slug: str,
    headline: str,
    published_at: datetime,
    labels: tuple[str, ...] = (),
    **fields: Any,
) -> Story:
    story = Story(
        id=fields.pop("id", abs(hash(slug)) % 1_000_000),
        slug=slug,
        headline=headline,
        body_html=fields.pop("body_html", "<p>Body.</p>"),
        published_at=published_at,
        status=fields.pop("status", "published"),
        **fields,
    )
    story.labels = [StoryLabel(label=label) for label in labels]
    return story


def column() -> Story:
    story = make_story(
        "chinese-citizens-are-fighting-for-russia",
        HEADLINE,
        datetime(2025, 4, 9, 7, 52, tzinfo=UTC),
        ("opinion",),
        lede=LEDE,
        body_html="<p>The President of Ukraine confirmed this …</p>",
        author_name="Vitaly Portnikov",
        author_bio="journalist, National Shevchenko Prize laureate",
        source_url="https://example.org/original",
        disclaimer=DISCLAIMER,
        section="opinion",
        language="en",
        author_slug="vitaly-portnikov",
    )
    story.tags = [
        StoryTag(slug="china", name="China", position=0),
        StoryTag(slug="russia", name="Russia", position=1),
        StoryTag(slug="ukraine", name="Ukraine", position=2),
    ]
    return story


def more_news() -> list[Story]:
    return [
        make_story(
            "recon",
            "Ukrainian reconnaissance tracks new Russian assault methods near Pokrovsk",
            datetime(2025, 7, 18, 16, 16, tzinfo=UTC),
        ),
        make_story(
            "kinburn",
            "Ukrainian flag raised on Kinburn Spit, in Black Sea",
            datetime(2025, 7, 18, 15, 54, tzinfo=UTC),
            ("exclusive",),
        ),
        make_story(
            "orban",
            "Orbán becomes key amplifier of Russian psyops in Europe",
            datetime(2025, 7, 18, 14, 21, tzinfo=UTC),
            ("opinion",),
        ),
        make_story(
            "sanctions",
            "EU ambassadors approve 18th sanctions package against Russia",
            datetime(2025, 7, 18, 8, 29, tzinfo=UTC),
            ("updated",),
        ),
        # 21:30 UTC on the 17th is already 00:30 on the 18th in Kyiv.
        make_story(
            "after-midnight",
            "Story after local midnight",
            datetime(2025, 7, 17, 21, 30, tzinfo=UTC),
            ("breaking", "updated"),
        ),
        make_story(
            "ambassador",
            "U.S. ramps up efforts to speed weapons delivery to Ukraine",
            datetime(2025, 7, 17, 18, 30, tzinfo=UTC),
        ),
        make_story(
            "stagnation",
            "Ukraine edges into a new era of stagnation",
            datetime(2025, 7, 17, 16, 20, tzinfo=UTC),
            ("opinion", "exclusive"),
        ),
    ]


# --- rendering, without a database -------------------------------------------------


def items(stories: list[Story]) -> list[pages.Piece]:
    return pages.pieces(stories, settings().tz)


def front(stories: list[Story], **kwargs: Any) -> str:
    return pages.render_front_page(
        items(stories), older=kwargs.pop("older", None), settings=settings(), **kwargs
    )


def story_page(story: Story, more: list[Story]) -> str:
    return pages.render_story_page(story, items(more), settings=settings())


def json_ld(html: str) -> Any:
    found = re.findall(r'<script type="application/ld\+json">(.*?)</script>', html, re.DOTALL)
    assert len(found) == 1, found
    return json.loads(found[0])


def test_front_page_groups_by_local_day_like_the_seed() -> None:
    html = front(more_news())
    text = text_of(html)
    assert "<title>Espreso. Global</title>" in html
    assert '<link rel="canonical" href="https://news.example.org/">' in html
    assert "More news" in text
    friday = text.index("2025, Friday 18 July")
    thursday = text.index("2025, Thursday 17 July")
    assert friday < thursday
    assert text.count("2025, Friday") == 1 and text.count("2025, Thursday") == 1
    assert "19:16 Ukrainian reconnaissance tracks new Russian assault methods near Pokrovsk" in text
    assert "18:54 Exclusive Ukrainian flag raised on Kinburn Spit, in Black Sea" in text
    assert "17:21 OPINION Orbán becomes key amplifier of Russian psyops in Europe" in text
    assert "11:29 Updated EU ambassadors approve 18th sanctions package against Russia" in text
    # Grouped by the local day, not the UTC one; one primary label per story.
    assert friday < text.index("00:30 Breaking Story after local midnight") < thursday
    assert "21:30 U.S. ramps up efforts" in text
    assert "19:20 OPINION Ukraine edges into a new era of stagnation" in text
    assert '<a class="news-headline" href="/stories/kinburn">' in html
    assert 'rel="next"' not in html and "Latest" not in html
    for href, mime in [
        ("/feeds/all.rss", "application/rss+xml"),
        ("/feeds/all.atom", "application/atom+xml"),
        ("/feeds/all.json", "application/feed+json"),
    ]:
        assert f'<link rel="alternate" type="{mime}" href="{href}"' in html


def test_older_and_latest_links() -> None:
    first = front(more_news(), older="/?before=1.2&page=2")
    assert 'rel="next" href="/?before=1.2&amp;page=2">Older' in first and "Latest" not in first
    second = front(more_news(), older="/?before=1.1&page=3", page=2)
    assert 'href="/">← Latest' in second and 'href="/?before=1.1&amp;page=3">Older' in second
    assert "page 2" in second and "canonical" not in second


def test_empty_front_page() -> None:
    assert "No stories yet." in front([])


def test_list_page_of_an_author_tag_and_section() -> None:
    stories = more_news()
    html = pages.render_list_page(
        "author",
        "vitaly-portnikov",
        "Vitaly Portnikov",
        items(stories),
        bio="journalist, National Shevchenko Prize laureate",
        older=None,
        settings=settings(),
    )
    text = text_of(html)
    assert (
        "Vitaly Portnikov journalist, National Shevchenko Prize laureate Stories by Vitaly Portnikov" in text
    )
    assert "2025, Friday 18 July 19:16 Ukrainian reconnaissance" in text
    assert '<link rel="canonical" href="https://news.example.org/authors/vitaly-portnikov">' in html
    for ext, mime in [
        ("rss", "application/rss+xml"),
        ("atom", "application/atom+xml"),
        ("json", "application/feed+json"),
    ]:
        assert f'<link rel="alternate" type="{mime}" href="/feeds/author/vitaly-portnikov.{ext}"' in html
    tag = pages.render_list_page(
        "tag", "china", "China", items(stories), bio=None, older=None, settings=settings()
    )
    assert "<title>China — Espreso. Global</title>" in tag
    assert 'href="/feeds/tag/china.atom"' in tag and "Stories tagged China" in text_of(tag)
    section = pages.render_list_page(
        "section", "opinion", "Opinion", items(stories), bio=None, older=None, settings=settings()
    )
    assert 'href="/feeds/section/opinion.json"' in section and "Latest in Opinion" in text_of(section)


def test_page_head_links() -> None:
    html = story_page(column(), more_news())
    assert html.startswith("<!doctype html>")
    assert '<html lang="en">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert (
        '<link rel="canonical" '
        'href="https://news.example.org/stories/chinese-citizens-are-fighting-for-russia">'
    ) in html
    for href, mime in [
        ("/feeds/all.rss", "application/rss+xml"),
        ("/feeds/all.atom", "application/atom+xml"),
        ("/feeds/all.json", "application/feed+json"),
        ("/feeds/section/opinion.rss", "application/rss+xml"),
        ("/feeds/section/opinion.atom", "application/atom+xml"),
        ("/feeds/author/vitaly-portnikov.json", "application/feed+json"),
    ]:
        assert f'<link rel="alternate" type="{mime}" href="{href}"' in html
    assert re.search(r'<link rel="stylesheet" href="/static/site\.css\?v=[0-9a-f]+">', html)
    # The one script is JSON-LD: data, which the CSP's script-src 'none' does not run.
    assert html.count("<script") == 1 and '<script type="application/ld+json">' in html
    assert "style=" not in html


def test_story_page_like_the_seed() -> None:
    html = story_page(column(), more_news())
    text = text_of(html)
    title = re.search(r"<title>([^<]*)</title>", html)
    assert title is not None and unescape(title.group(1)) == f"{HEADLINE} — Espreso. Global"
    assert f"OPINION {HEADLINE} 9 April, 2025 Wednesday 10:52 {LEDE}" in text
    assert "The President of Ukraine confirmed this …" in text
    assert '<a href="https://example.org/original" rel="external noopener">Source</a>' in html
    assert "About the author. Vitaly Portnikov, journalist, National Shevchenko Prize laureate" in text
    assert DISCLAIMER in text
    assert "Tags: China Russia Ukraine" in text
    assert "Updated" not in text.split("More news")[0]
    assert "<figure" not in html
    # The More news aside below the article.
    aside = text.split("More news", 1)[1]
    assert "2025, Friday 18 July 19:16 Ukrainian reconnaissance" in aside
    assert "18:54 Exclusive Ukrainian flag raised" in aside
    assert '<article class="story" lang="en">' in html


def test_story_page_links_its_tags_and_author() -> None:
    html = story_page(column(), [])
    for slug, name in [("china", "China"), ("russia", "Russia"), ("ukraine", "Ukraine")]:
        assert f'<a rel="tag" href="/tags/{slug}">{name}</a>' in html
    assert 'About the author. <a rel="author" href="/authors/vitaly-portnikov">Vitaly Portnikov</a>,' in html
    byline = make_story(
        "wire",
        "A wire story",
        datetime(2025, 7, 18, 6, 0, tzinfo=UTC),
        author_name="Olena Ivanova",
        author_slug="olena-ivanova",
    )
    assert (
        '<p class="byline"><a rel="author" href="/authors/olena-ivanova">Olena Ivanova</a></p>'
        in story_page(byline, [])
    )


def test_story_page_json_ld_news_article() -> None:
    story = column()
    story.updated_at = datetime(2025, 4, 10, 9, 0, tzinfo=UTC)
    story.picture = {"url": "https://img.example.org/column.jpg", "caption": "Portnikov"}
    data = json_ld(story_page(story, []))
    assert data["@context"] == "https://schema.org" and data["@type"] == "NewsArticle"
    assert data["headline"] == HEADLINE
    assert data["datePublished"] == "2025-04-09T07:52:00Z"
    assert data["dateModified"] == "2025-04-10T09:00:00Z"
    assert data["author"] == [
        {
            "@type": "Person",
            "name": "Vitaly Portnikov",
            "url": "https://news.example.org/authors/vitaly-portnikov",
        }
    ]
    assert data["image"] == ["https://img.example.org/column.jpg"]
    assert (
        data["mainEntityOfPage"]
        == "https://news.example.org/stories/chinese-citizens-are-fighting-for-russia"
    )
    # Without an update, modified is published; without an author, the site is named.
    plain = json_ld(story_page(make_story("plain", "Plain", datetime(2025, 7, 18, 6, 0, tzinfo=UTC)), []))
    assert plain["dateModified"] == plain["datePublished"] == "2025-07-18T06:00:00Z"
    assert plain["author"][0]["@type"] == "Organization" and "image" not in plain


def test_json_ld_cannot_end_its_script() -> None:
    evil = "Breaking </script><script>alert(1)</script> <!-- & \u2028"
    story = make_story(
        "evil",
        evil,
        datetime(2025, 7, 18, 6, 0, tzinfo=UTC),
        lede="</SCRIPT >",
        author_name="</script>",
        author_slug="script",
    )
    html = story_page(story, [])
    block = html.split('<script type="application/ld+json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in block and ">" not in block and "&" not in block
    assert json_ld(html)["headline"] == evil
    assert html.lower().count("</script") == 1


def test_story_page_picture_update_and_labels() -> None:
    story = make_story(
        "flag",
        "Ukrainian flag raised on Kinburn Spit",
        datetime(2025, 7, 18, 15, 54, tzinfo=UTC),
        ("updated", "exclusive"),
        updated_at=datetime(2025, 7, 18, 17, 5, tzinfo=UTC),
        correction_note="An earlier version misnamed the spit.",
        picture={
            "url": "https://img.example.org/flag.jpg",
            "media_type": "image/jpeg",
            "width": 1200,
            "height": 800,
            "size": 123456,
            "caption": "The flag over the spit",
            "credit": "Navy press service",
        },
    )
    html = story_page(story, [])
    text = text_of(html)
    assert re.search(
        r'<figure class="picture">\s*<img src="https://img\.example\.org/flag\.jpg" '
        r'alt="The flag over the spit" width="1200" height="800"[^>]*>\s*'
        r"<figcaption>The flag over the spit — Navy press service</figcaption>\s*</figure>",
        html,
    )
    assert text.index("Exclusive") < text.index("Updated")
    assert "Updated 18 July, 2025 Friday 20:05" in text
    assert "An earlier version misnamed the spit." in text
    assert "About the author" not in text and "Source" not in text and "Tags:" not in text


def test_unsafe_urls_are_not_emitted() -> None:
    story = column()
    story.source_url = "javascript:alert(1)"
    story.picture = {"url": "javascript:alert(2)", "caption": "x"}
    html = story_page(story, [])
    assert "javascript:" not in html
    assert ">Source</a>" not in html
    assert "<figure" not in html


def test_wire_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    story = make_story(
        "evil",
        f"Breaking {evil}",
        datetime(2025, 7, 18, 16, 16, tzinfo=UTC),
        ("opinion",),
        lede=evil,
        author_name=evil,
        author_bio=evil,
        disclaimer=evil,
        correction_note=evil,
        updated_at=datetime(2025, 7, 18, 17, 0, tzinfo=UTC),
        picture={"url": "https://img.example.org/a.jpg", "caption": evil, "credit": evil},
    )
    story.tags = [StoryTag(slug="evil", name=evil, position=0)]
    for html in (story_page(story, [story]), front([story])):
        assert "<script>" not in html
        assert "&lt;script&gt;" in html


def test_more_news_slot_is_filled_without_the_story_itself() -> None:
    stories = more_news()
    page = pages.render_story_page(stories[1], None, settings=settings()).encode()
    assert pages.MORE_NEWS_SLOT in page and b"More news" not in page
    filled = pages.fill_story_page(page, items(stories), stories[1].id).decode()
    assert filled == story_page(stories[1], stories)
    aside = text_of(filled).split("More news", 1)[1]
    assert "Kinburn" not in aside and "19:16 Ukrainian reconnaissance" in aside
    # Stored between renders as JSON, the same pieces.
    assert pages.pieces_from_json(pages.pieces_to_json(items(stories))) == items(stories)


def test_more_news_limit_and_days() -> None:
    shown = text_of(str(pages.more_news(items(more_news()), limit=5)))
    assert shown.count("2025, Friday 18 July") == 1 and "Thursday" not in shown
    assert "00:30 Breaking Story after local midnight" in shown
    assert [(p.day, p.story_id) for p in items(more_news())][4][0] == "2025-07-18"
