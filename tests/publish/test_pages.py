"""Reader pages: rendered from in-memory stories, and served from a real database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from services.publish import pages
from shared import db
from shared.config import Settings, reset_settings
from shared.models import Base, Source, Story, StoryLabel, StoryTag
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


def test_front_page_groups_by_local_day_like_the_seed() -> None:
    html = pages.render_front_page(more_news(), page=1, has_next=False, settings=settings())
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
    assert 'rel="next"' not in html and 'rel="prev"' not in html


def test_front_page_pagination_links() -> None:
    first = pages.render_front_page(more_news(), page=1, has_next=True, settings=settings())
    assert 'href="/?page=2">Older' in first and "Newer" not in first
    second = pages.render_front_page(more_news(), page=2, has_next=True, settings=settings())
    assert 'href="/">← Newer' in second and 'href="/?page=3">Older' in second
    assert '<link rel="canonical" href="https://news.example.org/?page=2">' in second
    third = pages.render_front_page(more_news(), page=3, has_next=False, settings=settings())
    assert 'href="/?page=2">← Newer' in third and "Older" not in third


def test_empty_front_page() -> None:
    html = pages.render_front_page([], page=1, has_next=False, settings=settings())
    assert "No stories yet." in html


def test_page_head_links() -> None:
    html = pages.render_story_page(column(), more_news(), settings=settings())
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
    ]:
        assert f'<link rel="alternate" type="{mime}" href="{href}"' in html
    assert re.search(r'<link rel="stylesheet" href="/static/site\.css\?v=[0-9a-f]+">', html)
    assert "<script" not in html
    assert "style=" not in html


def test_story_page_like_the_seed() -> None:
    html = pages.render_story_page(column(), more_news(), settings=settings())
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
    html = pages.render_story_page(story, [], settings=settings())
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
    html = pages.render_story_page(story, [], settings=settings())
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
    for html in (
        pages.render_story_page(story, [story], settings=settings()),
        pages.render_front_page([story], page=1, has_next=False, settings=settings()),
    ):
        assert "<script" not in html
        assert "&lt;script&gt;" in html


def test_local_day_grouping() -> None:
    groups = pages.group_by_day(more_news(), settings().tz)
    assert [(g.year_weekday, g.day_month, len(g.items)) for g in groups] == [
        ("2025, Friday", "18 July", 5),
        ("2025, Thursday", "17 July", 2),
    ]


# --- the router, on a temporary SQLite database -------------------------------------


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("NEWSROOM_DATABASE_URL", f"sqlite:///{tmp_path}/t.db")
    monkeypatch.setenv("NEWSROOM_SITE_URL", "https://news.example.org")
    monkeypatch.setenv("NEWSROOM_TIMEZONE", "Europe/Kyiv")
    reset_settings()
    db.dispose_engines()
    Base.metadata.create_all(db.get_engine())
    app = FastAPI()
    app.include_router(pages.router)
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        db.dispose_engines()
        reset_settings()


def seed_db(count: int) -> None:
    """One source, ``count`` published stories a minute apart, and some hidden ones."""
    start = datetime(2025, 7, 18, 6, 0, tzinfo=UTC)
    with db.session_scope() as session:
        source = Source(name="wire")
        session.add(source)
        session.flush()

        def add(slug: str, status: str, published_at: datetime | None, **kw: Any) -> None:
            story = make_story(slug, f"Headline {slug}", published_at or start, status=status, **kw)
            story.published_at = published_at
            story.source_id = source.id
            story.guid = slug
            story.content_hash = slug
            session.add(story)

        for n in range(count):
            add(
                f"story-{n:03d}",
                "published",
                start + timedelta(minutes=n),
                labels=("exclusive",) if n == 0 else (),
            )
        add("draft", "ingested", None)
        add("killed", "unpublished", start + timedelta(days=1))
        add("later", "scheduled", None, publish_at=start + timedelta(days=2))


def test_story_route(client: TestClient) -> None:
    seed_db(3)
    response = client.get("/stories/story-000")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    text = text_of(response.text)
    assert "Exclusive Headline story-000 18 July, 2025 Friday 09:00" in text
    aside = text.split("More news", 1)[1]
    assert "09:02 Headline story-002" in aside and "09:01 Headline story-001" in aside
    assert "story-000" not in aside
    assert 'href="https://news.example.org/stories/story-000"' in response.text


@pytest.mark.parametrize("slug", ["draft", "killed", "later", "no-such-story"])
def test_hidden_stories_are_404(client: TestClient, slug: str) -> None:
    seed_db(1)
    response = client.get(f"/stories/{slug}")
    assert response.status_code == 404
    assert response.headers["content-security-policy"] == CSP
    assert "Page not found" in response.text


def test_front_page_route_lists_published_newest_first(client: TestClient) -> None:
    seed_db(3)
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CSP
    slugs = re.findall(r'href="/stories/([^"]+)"', response.text)
    assert slugs == ["story-002", "story-001", "story-000"]
    assert "Exclusive" in response.text


def test_front_page_route_paginates(client: TestClient) -> None:
    seed_db(pages.PAGE_SIZE + 5)
    first = client.get("/")
    slugs = re.findall(r'href="/stories/([^"]+)"', first.text)
    assert len(slugs) == pages.PAGE_SIZE
    assert slugs[0] == "story-054" and slugs[-1] == "story-005"
    assert 'href="/?page=2"' in first.text

    second = client.get("/?page=2")
    assert second.status_code == 200
    slugs = re.findall(r'href="/stories/([^"]+)"', second.text)
    assert slugs == ["story-004", "story-003", "story-002", "story-001", "story-000"]
    assert 'href="/"' in second.text and "?page=3" not in second.text

    assert client.get("/?page=3").status_code == 404
    assert client.get("/?page=0").status_code == 422


def test_stylesheet_route(client: TestClient) -> None:
    html = client.get("/").text
    href = re.search(r'<link rel="stylesheet" href="([^"]+)">', html)
    assert href is not None
    response = client.get(href.group(1))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert "immutable" in response.headers["cache-control"]
    assert ".news-item" in response.text
    assert "immutable" not in client.get("/static/site.css").headers["cache-control"]


def test_front_page_route_is_a_constant_number_of_queries(client: TestClient) -> None:
    seed_db(pages.PAGE_SIZE + 5)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = db.get_engine(read_only=True)
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get("/").status_code == 200
        assert client.get("/stories/story-010").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # Front page: stories + labels. Story: story + its tags + labels, list + labels.
    assert len(selects) <= 7, selects


def test_head_requests(client: TestClient) -> None:
    seed_db(1)
    assert client.head("/").status_code == 200
    assert client.head("/stories/story-000").status_code == 200
    assert client.head("/stories/draft").status_code == 404
