"""Reader pages on the running pipeline: rendered by the real worker in the feeds' rounds,
stored, and served with ETag / Last-Modified / Cache-Control / 304; the pages of a tag, an
author and a section, paged by key; the news sitemap stored like the feeds."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from lxml import etree  # type: ignore[import-untyped]
from sqlalchemy import event

from services.syndicate import pages, service, site
from shared import db
from shared.db import session_scope
from shared.models import utcnow
from shared.text import slugify
from tests.helpers.newsdesk import edit_and_republish, insert_story, new_source, publish, unique, unpublish
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import text_of, wait_for

pytestmark = pytest.mark.pipeline

SITE = "http://newsroom.test"
SITEMAP = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
CSP = pages.SECURITY_HEADERS["Content-Security-Policy"]


def get(pipeline: Pipeline, path: str, **headers: str) -> Any:
    return pipeline.client.get(path, headers=headers)


def story_links(html: str) -> list[str]:
    return re.findall(r'<a class="news-headline" href="/stories/([^"]+)"', html)


def stored(path: str) -> site.StoredPage | None:
    with session_scope(read_only=True) as session:
        return site.stored_page(session, path)


def stored_feed_urls(name: str) -> list[str]:
    with session_scope(read_only=True) as session:
        document = service.stored_document(session, name, "json")
    return [] if document is None else [item["url"] for item in json.loads(document.body)["items"]]


def assert_served_like_a_feed(pipeline: Pipeline, path: str) -> None:
    """ETag, Last-Modified, Cache-Control, a 304 on each validator, HEAD; the security headers."""
    first = get(pipeline, path)
    assert first.status_code == 200, path
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert etag.startswith('"') and parsedate_to_datetime(modified).tzinfo is not None
    assert first.headers["cache-control"].startswith("public, max-age=")
    assert first.headers["x-content-type-options"] == "nosniff"
    if first.headers["content-type"].startswith("text/html"):
        assert first.headers["content-security-policy"] == CSP
    for headers in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
        again = get(pipeline, path, **headers)
        if again.headers.get("etag") != etag:
            continue  # it changed meanwhile: a 200 is right
        assert again.status_code == 304, (path, headers)
        assert again.content == b"" and again.headers["last-modified"] == modified
    head = pipeline.client.head(path)
    assert head.status_code == 200 and head.content == b""


# --- a story's way onto every page, and off them ---------------------------------------------


def test_a_story_is_on_every_page_as_soon_as_in_the_feeds_and_leaves_them_as_quickly(
    pipeline: Pipeline,
) -> None:
    token = unique("pages")
    section, tag, author = f"World {token}", f"Kyiv {token}", f"Olena Petrenko {token}"
    picture = {"url": "https://cdn.example.com/p.jpg", "media_type": "image/jpeg", "caption": "Kyiv"}
    story = insert_story(new_source(), section=section, tags=[tag], author_name=author, picture=picture)
    url = f"{SITE}/stories/{story.slug}"
    lists = {
        f"/sections/{slugify(section)}": f"section/{slugify(section)}",
        f"/tags/{slugify(tag)}": f"tag/{slugify(tag)}",
        f"/authors/{slugify(author)}": f"author/{slugify(author)}",
    }
    # Read once before, so that the API holds copies that the change must replace.
    get(pipeline, "/")
    assert get(pipeline, f"/stories/{story.slug}").status_code == 404

    publish(story.id, labels=["exclusive"])
    # The front page and `all` are stored in one transaction: whenever the feed shows the
    # story, so does the stored front page (and its page is stored before them).
    wait_for(lambda: url in stored_feed_urls("all"), what="the story in the stored `all` feed")
    front = stored(site.FRONT)
    assert front is not None and front.body is not None and story.slug in story_links(front.body.decode())
    # Its page is stored in the round that flagged it, before the lists (or, in a rare race
    # between rounds, rendered when first asked for: a listed story is never a 404).
    page = wait_for(lambda: stored(f"/stories/{story.slug}"), what="the story page stored")
    assert page.body is not None and page.story_id == story.id
    wait_for(lambda: story.slug in story_links(get(pipeline, "/").text), what="the story on /")
    for path, feed in lists.items():
        wait_for(lambda feed=feed: url in stored_feed_urls(feed), what=f"the story in {feed}")
        listed = stored(path)
        assert listed is not None and listed.body is not None and story.slug in listed.body.decode()

    answer = get(pipeline, f"/stories/{story.slug}")
    assert answer.status_code == 200
    assert f"Exclusive {story.headline}" in text_of(answer.text)
    for path in ["/", f"/stories/{story.slug}", *lists]:
        assert_served_like_a_feed(pipeline, path)
    tag_page = get(pipeline, f"/tags/{slugify(tag)}")
    assert f"Stories tagged {tag}" in text_of(tag_page.text)
    assert '<link rel="alternate" type="application/atom+xml" href="/feeds/tag/' in tag_page.text
    author_page = text_of(get(pipeline, f"/authors/{slugify(author)}").text)
    assert author in author_page and story.headline in author_page
    assert f"Latest in {pages.section_name(slugify(section))}" in text_of(
        get(pipeline, f"/sections/{slugify(section)}").text
    )

    unpublish(story.id)
    wait_for(lambda: url not in stored_feed_urls("all"), what="the story gone from `all`")
    front = stored(site.FRONT)
    assert front is not None and front.body is not None and story.slug not in story_links(front.body.decode())
    gone = stored(f"/stories/{story.slug}")
    assert gone is not None and gone.body is None
    wait_for(lambda: get(pipeline, f"/stories/{story.slug}").status_code == 404, what="the story page 404")
    wait_for(lambda: story.slug not in get(pipeline, "/").text, what="the story off /")
    for path, feed in lists.items():
        wait_for(lambda feed=feed: url not in stored_feed_urls(feed), what=f"the story gone from {feed}")
        # Nothing published there any more: the page is 404, as soon as the feed is empty.
        assert (listed := stored(path)) is not None and listed.body is None
        wait_for(lambda path=path: get(pipeline, path).status_code == 404, what=f"{path} 404")
    missing = get(pipeline, f"/stories/{story.slug}")
    assert missing.headers["content-security-policy"] == CSP and "Page not found" in missing.text


def test_a_story_page_follows_its_story_and_the_latest_news(pipeline: Pipeline) -> None:
    tag = unique("follows")
    source = new_source()
    first = insert_story(source, tags=[tag])
    publish(first.id)
    path = f"/stories/{first.slug}"
    wait_for(lambda: get(pipeline, path).status_code == 200, what="the first story's page")
    etag = get(pipeline, path).headers["etag"]

    # An edit re-renders the page (and its ETag moves).
    headline = f"{first.headline} — corrected"
    edit_and_republish(first.id, headline=headline)
    wait_for(lambda: headline in text_of(get(pipeline, path).text), what="the new headline on its page")
    assert get(pipeline, path).headers["etag"] != etag

    # Another story: in the first one's "More news", which never lists the story itself.
    second = insert_story(source, tags=[tag])
    publish(second.id)

    def aside(slug: str) -> list[str]:
        html = get(pipeline, f"/stories/{slug}").text
        return story_links(html.split('<aside class="aside">', 1)[1])

    wait_for(lambda: second.slug in aside(first.slug), what="the second story in the first's More news")
    assert first.slug not in aside(first.slug)
    assert first.slug in aside(second.slug) and second.slug not in aside(second.slug)
    assert len(aside(first.slug)) <= pages.MORE_NEWS_SIZE


def test_story_page_links_tags_and_author_and_carries_json_ld(pipeline: Pipeline) -> None:
    token = unique("links")
    author, tags = f"Vitaly Portnikov {token}", [f"China {token}", f"Russia {token}"]
    picture = {"url": "https://cdn.example.com/column.jpg", "media_type": "image/jpeg"}
    story = insert_story(
        new_source(),
        tags=tags,
        author_name=author,
        picture=picture,
        headline=f"Column </script><script>alert(1)</script> {token}",
    )
    publish(story.id)
    path = f"/stories/{story.slug}"
    page = wait_for(lambda: a if (a := get(pipeline, path)).status_code == 200 else None, what="the page")
    html = page.text
    for name in tags:
        href = f"/tags/{slugify(name)}"
        assert f'<a rel="tag" href="{href}">{name}</a>' in html
        assert wait_for(lambda href=href: get(pipeline, href).status_code == 200, what=f"{href}")
    author_href = f"/authors/{slugify(author)}"
    assert f'<a rel="author" href="{author_href}">{author}</a>' in html
    assert get(pipeline, author_href).status_code == 200
    assert html.lower().count("<script") == 1
    [block] = re.findall(r'<script type="application/ld\+json">(.*?)</script>', html, re.DOTALL)
    article = json.loads(block)
    assert article["@type"] == "NewsArticle" and article["headline"] == story.headline
    assert article["datePublished"].endswith("Z") and article["dateModified"] >= article["datePublished"]
    assert article["author"][0]["name"] == author and article["image"] == [picture["url"]]


# --- list pages: paged by key ------------------------------------------------------------------


def test_a_list_pages_by_key_cheaply_and_ends(pipeline: Pipeline) -> None:
    tag = unique("paging")
    source = new_source()
    now = utcnow().replace(microsecond=0)
    # Two stories share one moment: the key (published_at, id) still orders and splits them.
    moments = [now - timedelta(minutes=n) for n in range(pages.PAGE_SIZE + 4)] + [now - timedelta(days=1)]
    slugs = [
        insert_story(source, tags=[tag], status="published", published_at=moment).slug for moment in moments
    ]
    path = f"/tags/{slugify(tag)}"
    # Never rendered (stories inserted straight into the database): rendered on first request.
    first = get(pipeline, path)
    assert first.status_code == 200
    on_first = story_links(first.text)
    assert on_first == slugs[: pages.PAGE_SIZE]
    older = re.search(r'<a class="pager-older" rel="next" href="([^"]+)">', first.text)
    assert older is not None
    href = older.group(1).replace("&amp;", "&")
    assert href.startswith(f"{path}?before=") and href.endswith("&page=2")

    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = db.get_engine(read_only=True)
    event.listen(engine, "before_cursor_execute", record)
    try:
        second = get(pipeline, href)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert second.status_code == 200
    assert story_links(second.text) == slugs[pages.PAGE_SIZE :]
    assert "pager-older" not in second.text and f'href="{path}">← Latest' in second.text
    # The key query (from the last story shown on, not OFFSET), the labels, the tag's name.
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 3 and "stories.published_at < " in selects[0], selects
    assert second.headers["cache-control"].startswith("public, max-age=")
    again = get(pipeline, href, **{"If-None-Match": second.headers["etag"]})
    assert again.status_code == 304

    # Past the end: 404; a key we did not write or a page out of bounds: 400, saying why.
    last = slugs[-1]
    with session_scope(read_only=True) as session:
        from shared.models import Story

        row = session.query(Story.published_at, Story.id).filter(Story.slug == last).one()
    end = get(pipeline, f"{path}?before={site.page_key((row.published_at, row.id))}")
    assert end.status_code == 404
    for bad in ("x", "1.2.3", "9" * 50, "-1.2"):
        answer = get(pipeline, f"{path}?before={bad}")
        assert answer.status_code == 400 and "not one of ours" in answer.text, bad
    assert get(pipeline, f"{path}?before=1.1&page={site.MAX_PAGES + 1}").status_code == 400
    assert get(pipeline, f"{path}?before=1.1&page=x").status_code == 400


def test_front_page_pages_by_key(pipeline: Pipeline) -> None:
    first = get(pipeline, "/")
    assert first.status_code == 200
    links = story_links(first.text)
    older = re.search(r'<a class="pager-older" rel="next" href="([^"]+)">', first.text)
    if len(links) < pages.PAGE_SIZE or older is None:
        source = new_source()
        for n in range(pages.PAGE_SIZE + 1):
            insert_story(source, status="published", published_at=utcnow() - timedelta(days=400, minutes=n))
        service.render_feed_now("all", seen=None)
        first = get(pipeline, "/")
        older = re.search(r'<a class="pager-older" rel="next" href="([^"]+)">', first.text)
    assert older is not None
    second = get(pipeline, older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200 and 'href="/">← Latest' in second.text
    assert not set(story_links(second.text)) & set(story_links(first.text))
    assert get(pipeline, "/?page=2").status_code == 200  # an old page link: the front page


def test_nothing_published_there_is_404(pipeline: Pipeline) -> None:
    for path in (
        f"/tags/{unique('none')}",
        f"/authors/{unique('none')}",
        f"/sections/{unique('none')}",
        "/tags/Not-A-Slug",
        f"/stories/{unique('none')}",
    ):
        answer = get(pipeline, path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html")
        assert "Page not found" in answer.text
    draft = insert_story(new_source(), tags=[unique("draft")])
    assert get(pipeline, f"/stories/{draft.slug}").status_code == 404


# --- the news sitemap ----------------------------------------------------------------------------


def test_news_sitemap_is_rendered_when_stories_change(pipeline: Pipeline) -> None:
    source = new_source()
    fresh = insert_story(source)
    publish(fresh.id)
    loc = f"{SITE}/stories/{fresh.slug}"

    def locs() -> list[str]:
        page = stored(site.SITEMAP)
        if page is None or page.body is None:
            return []
        return [url.findtext(f"{SITEMAP}loc") for url in etree.fromstring(page.body).findall(f"{SITEMAP}url")]

    wait_for(lambda: loc in locs(), what="the story in the stored sitemap")
    answer = get(pipeline, "/sitemaps/news.xml")
    assert answer.headers["content-type"].startswith("application/xml")
    assert_served_like_a_feed(pipeline, "/sitemaps/news.xml")
    unpublish(fresh.id)
    wait_for(lambda: loc not in locs(), what="the story gone from the stored sitemap")
    wait_for(lambda: loc not in get(pipeline, "/sitemaps/news.xml").text, what="the story off the sitemap")


def test_a_sitemap_not_rendered_for_a_while_is_rendered_when_read(pipeline: Pipeline) -> None:
    # Stories leave it 48 hours after publication, whether anything changed or not.
    service.load_page(site.SITEMAP)
    with session_scope() as session:
        from shared.models import Page

        page = session.get_one(Page, site.SITEMAP)
        page.body, page.etag = b"<stale/>", '"stale"'
        page.rendered_at = utcnow() - site.SITEMAP_REFRESH - timedelta(seconds=1)
    fresh = service.load_page(site.SITEMAP)
    assert fresh is not None and fresh.body is not None and fresh.body != b"<stale/>"
    assert etree.fromstring(fresh.body).tag == f"{SITEMAP}urlset"
    again = stored(site.SITEMAP)
    assert again is not None and again.body == fresh.body


def test_story_pages_waiting_never_hold_back_the_all_feed(pipeline: Pipeline) -> None:
    # A backlog of story pages (here: pages of stories that do not exist, which render as gone).
    paths = [f"/stories/{unique('backlog')}" for _ in range(300)]
    with session_scope() as session:
        site.flag_pages(session, paths)
        service.mark_dirty(session, [service.FeedKey("all")])
    with session_scope(read_only=True) as session:
        from sqlalchemy import select

        from shared.models import Feed

        before = session.scalar(select(Feed.renders).where(Feed.key == "all")) or 0
    # A round with no time to spare renders a page or two, then `all` all the same.
    service.render_dirty(budget=0.0)
    with session_scope(read_only=True) as session:
        assert (session.scalar(select(Feed.renders).where(Feed.key == "all")) or 0) > before

    def backlog_left() -> int:
        with session_scope(read_only=True) as session:
            return len([p for p, _, _ in site.dirty_pages(session, limit=1000) if p in paths])

    wait_for(lambda: backlog_left() == 0, what="the backlog rendered by the following rounds")
    assert all(get(pipeline, path).status_code == 404 for path in paths[:3])
