"""Stored feeds on the running pipeline: rendered by the real worker after real publishes,
served with ETag / Last-Modified / 304, checked by feedparser, the JSON Feed 1.1 schema and
(where its source is present) the W3C Feed Validation Service."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import feedparser  # type: ignore[import-untyped]
import pytest
from lxml import etree  # type: ignore[import-untyped]
from sqlalchemy import select

from services.cli import main
from services.syndicate import service
from services.syndicate.feeds import MEDIA_TYPES, FeedKey, RenderedFeed
from shared.db import session_scope
from shared.models import Feed, Story, utcnow
from shared.text import slugify
from tests.helpers.newsdesk import (
    TRICKY_BODY,
    edit_and_republish,
    insert_story,
    new_source,
    publish,
    unique,
    unpublish,
)
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import jsonfeed_errors, wait_for
from tests.helpers.w3c import validate

pytestmark = pytest.mark.pipeline

SITE = "http://newsroom.test"
FORMATS = ("rss", "atom", "json")
PICTURE = {
    "url": "https://cdn.example.com/pictures/kyiv.jpg",
    "media_type": "image/jpeg",
    "width": 1200,
    "height": 800,
    "size": 54321,
    "caption": "Київ at dawn & dusk",
    "credit": "Photo: AP",
}
NEWS = "{http://www.google.com/schemas/sitemap-news/0.9}"
SITEMAP = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


def get_feed(pipeline: Pipeline, name: str, fmt: str, **headers: str) -> Any:
    return pipeline.client.get(f"/feeds/{name}.{fmt}", headers=headers)


def entry_urls(body: bytes, fmt: str) -> list[str]:
    if fmt == "json":
        return [item["url"] for item in json.loads(body)["items"]]
    return [entry.link for entry in feedparser.parse(body).entries]


def shows(pipeline: Pipeline, name: str, url: str, *, present: bool = True) -> bool:
    """Whether every format of the feed shows (or no longer shows) the story."""
    for fmt in FORMATS:
        answer = get_feed(pipeline, name, fmt)
        inside = answer.status_code == 200 and url in entry_urls(answer.content, fmt)
        if inside != present:
            return False
    return True


def assert_valid(body: bytes, fmt: str, url: str) -> None:
    """No bozo in feedparser, the JSON Feed 1.1 schema, and no W3C errors where it runs."""
    if fmt == "json":
        assert jsonfeed_errors(json.loads(body)) == []
        return
    parsed = feedparser.parse(body)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    if os.environ.get("FEEDVALIDATOR_SRC"):
        feed = RenderedFeed(body=body, etag="", last_modified=utcnow(), media_type=MEDIA_TYPES[fmt])
        errors = [event for event in validate(feed, url) if event["level"] == "error"]
        assert errors == [], json.dumps(errors, ensure_ascii=False)


def atom_updated(body: bytes) -> datetime:
    """The first entry's atom:updated, to the microsecond."""
    text = etree.fromstring(body).findtext(
        "{http://www.w3.org/2005/Atom}entry/{http://www.w3.org/2005/Atom}updated"
    )
    return datetime.fromisoformat(text)


def last_modified(pipeline: Pipeline, name: str, fmt: str) -> Any:
    return parsedate_to_datetime(get_feed(pipeline, name, fmt).headers["last-modified"])


# --- the story's way through every feed --------------------------------------------------------


def test_a_story_reaches_every_feed_valid_and_leaves_them_all_when_unpublished(pipeline: Pipeline) -> None:
    token = unique("feeds")
    section, tag, author = f"Світ {token}", f"Київ {token}", f"Олена Петренко {token}"
    story = insert_story(
        new_source(), section=section, tags=[tag, "War & Peace"], author_name=author, picture=PICTURE
    )
    url = f"{SITE}/stories/{story.slug}"
    names = [
        "all",
        f"section/{slugify(section)}",
        f"tag/{slugify(tag)}",
        f"author/{slugify(author)}",
        "label/exclusive",
    ]
    # Read once before the change, so the API holds copies that the change must replace.
    for fmt in FORMATS:
        assert get_feed(pipeline, "all", fmt).status_code == 200

    assert publish(story.id, labels=["exclusive"]) == "story.published"
    for name in names:
        wait_for(lambda name=name: shows(pipeline, name, url), what=f"the story in {name}")

    for name in names:
        for fmt in FORMATS:
            answer = get_feed(pipeline, name, fmt)
            assert answer.headers["content-type"] == MEDIA_TYPES[fmt]
            assert_valid(answer.content, fmt, f"{SITE}/feeds/{name}.{fmt}")

    tag_name = f"tag/{slugify(tag)}"
    rss = feedparser.parse(get_feed(pipeline, tag_name, "rss").content)
    [entry] = rss.entries
    assert entry.id == url
    assert entry.title == story.headline
    assert entry.content[0].value == TRICKY_BODY
    assert entry.author == author
    assert [t.term for t in entry.tags] == [slugify(section), tag, "War & Peace", "Exclusive"]
    assert entry.enclosures == [{"href": PICTURE["url"], "length": "54321", "type": "image/jpeg"}]
    assert entry.media_content[0]["url"] == PICTURE["url"]
    assert rss.feed.title == f"Newsroom — {tag}"

    atom = etree.fromstring(get_feed(pipeline, tag_name, "atom").content)
    ns = "{http://www.w3.org/2005/Atom}"
    [atom_entry] = atom.findall(f"{ns}entry")
    enclosure = atom_entry.find(f"{ns}link[@rel='enclosure']")
    assert (enclosure.get("href"), enclosure.get("type"), enclosure.get("length")) == (
        PICTURE["url"],
        "image/jpeg",
        "54321",
    )
    assert [link.get("rel") for link in atom.findall(f"{ns}link")] == ["self", "alternate"]
    assert atom.find(f"{ns}link[@rel='self']").get("href") == f"{SITE}/feeds/{tag_name}.atom"
    assert atom_entry.findtext(f"{ns}id") == url

    item = json.loads(get_feed(pipeline, tag_name, "json").content)["items"][0]
    assert (item["id"], item["title"], item["image"]) == (url, story.headline, PICTURE["url"])
    assert item["content_html"] == TRICKY_BODY

    before = {(name, fmt): last_modified(pipeline, name, fmt) for name in names for fmt in FORMATS}
    assert unpublish(story.id) == "story.killed"
    for name in names:
        wait_for(
            lambda name=name: shows(pipeline, name, url, present=False), what=f"the story gone from {name}"
        )
    for (name, fmt), moment in before.items():
        assert last_modified(pipeline, name, fmt) >= moment, (name, fmt)
    # The tag feed is empty now, and still valid.
    for fmt in FORMATS:
        answer = get_feed(pipeline, tag_name, fmt)
        assert entry_urls(answer.content, fmt) == []
        assert_valid(answer.content, fmt, f"{SITE}/feeds/{tag_name}.{fmt}")


def test_an_update_keeps_the_id_and_moves_atom_updated(pipeline: Pipeline) -> None:
    tag = unique("updates")
    story = insert_story(new_source(), tags=[tag])
    url = f"{SITE}/stories/{story.slug}"
    name = f"tag/{slugify(tag)}"
    publish(story.id)
    wait_for(lambda: shows(pipeline, name, url), what="the story in its tag feed")
    [before] = feedparser.parse(get_feed(pipeline, name, "atom").content).entries
    etag = get_feed(pipeline, name, "atom").headers["etag"]
    updated_before = atom_updated(get_feed(pipeline, name, "atom").content)

    new_headline = f"{story.headline} — оновлено & <more> 🎉"
    assert edit_and_republish(story.id, headline=new_headline) == "story.updated"

    def updated_entry() -> Any:
        entries = feedparser.parse(get_feed(pipeline, name, "atom").content).entries
        return entries[0] if entries and entries[0].title == new_headline else None

    after = wait_for(updated_entry, what="the new headline in the Atom feed")
    assert after.id == before.id == url
    assert after.published == before.published
    # Later, even when the update came within the same second as the publish.
    assert atom_updated(get_feed(pipeline, name, "atom").content) > updated_before
    assert get_feed(pipeline, name, "atom").headers["etag"] != etag
    [item] = json.loads(get_feed(pipeline, name, "json").content)["items"]
    assert item["id"] == url and "date_modified" in item
    assert "Updated" in [
        t.term for t in feedparser.parse(get_feed(pipeline, name, "rss").content).entries[0].tags
    ]


# --- serving -----------------------------------------------------------------------------------


def test_stored_bytes_are_served_with_validators_and_304(pipeline: Pipeline) -> None:
    first = get_feed(pipeline, "all", "atom")
    assert first.status_code == 200
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert etag.startswith('"') and etag.endswith('"')
    assert first.headers["cache-control"].startswith("public, max-age=")
    assert first.headers["link"] == f'<{SITE}/feeds/all.atom>; rel="self"'
    assert parsedate_to_datetime(modified).tzinfo is not None
    with session_scope(read_only=True) as session:
        stored = service.stored_document(session, "all", "atom")
    assert stored is not None
    if stored.etag == etag:  # unless a render landed in between
        assert first.content == stored.body

    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"x", W/{etag}'},
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
    ):
        again = get_feed(pipeline, "all", "atom", **headers)
        if again.headers["etag"] != etag:
            continue  # the feed changed meanwhile: a 200 is right
        assert again.status_code == 304, headers
        assert again.content == b""
        assert (again.headers["etag"], again.headers["last-modified"]) == (etag, modified)
        assert again.headers["link"] == first.headers["link"]

    stale = get_feed(pipeline, "all", "atom", **{"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.content
    if stale.headers["etag"] == etag:
        # Answered from memory before routing, and through the route at first: the same answer.
        assert stale.content == first.content
        assert {k: v for k, v in stale.headers.items() if k != "date"} == {
            k: v for k, v in first.headers.items() if k != "date"
        }
    older = parsedate_to_datetime(modified) - timedelta(days=1)
    assert (
        get_feed(
            pipeline, "all", "atom", **{"If-Modified-Since": older.strftime("%a, %d %b %Y %H:%M:%S GMT")}
        ).status_code
        == 200
    )
    head = pipeline.client.head("/feeds/all.atom")
    assert head.status_code == 200 and head.headers["etag"]

    for missing in (
        "all.xml",
        "section/World.rss",
        "section.rss",
        "label/funny.rss",
        "genre/x.json",
        f"tag/{unique('nothing')}.rss",
        "all",
        "section/a/b.rss",
    ):
        answer = pipeline.client.get(f"/feeds/{missing}")
        assert answer.status_code == 404, missing
        assert answer.json()["error"] == "not_found"


def test_a_feed_never_rendered_is_rendered_on_first_request(pipeline: Pipeline) -> None:
    tag = unique("first-request")
    story = insert_story(new_source(), tags=[tag], status="published", published_at=utcnow())
    name = f"tag/{slugify(tag)}"
    with session_scope(read_only=True) as session:
        assert service.stored_document(session, name, "json") is None
    answer = get_feed(pipeline, name, "json")
    assert answer.status_code == 200
    assert entry_urls(answer.content, "json") == [f"{SITE}/stories/{story.slug}"]
    with session_scope(read_only=True) as session:
        assert service.stored_document(session, name, "rss") is not None


def test_the_same_content_renders_to_the_same_bytes(newsroom: dict[str, str]) -> None:
    tag = unique("stable")
    insert_story(new_source(), tags=[tag], status="published", published_at=utcnow())
    name = f"tag/{slugify(tag)}"
    assert sorted(service.render_feed_now(name, seen=None)) == ["atom", "json", "rss"]
    with session_scope(read_only=True) as session:
        first = {fmt: service.stored_document(session, name, fmt) for fmt in FORMATS}
    assert service.render_feed_now(name, seen=None) == []
    key = FeedKey("tag", slugify(tag))
    with session_scope(read_only=True) as session:
        again = service.render_documents(key, service.stories_for(session, key, limit=50))
        for fmt in FORMATS:
            stored = first[fmt]
            assert stored is not None
            assert again[fmt].body == stored.body
            assert again[fmt].etag == stored.etag == service.stored_document(session, name, fmt).etag  # type: ignore[union-attr]


def test_last_modified_never_goes_back_when_the_newest_story_leaves(pipeline: Pipeline) -> None:
    tag = unique("monotonic")
    source = new_source()
    now = utcnow().replace(microsecond=0)
    insert_story(source, tags=[tag], status="published", published_at=now - timedelta(hours=2))
    newest = insert_story(source, tags=[tag], status="published", published_at=now - timedelta(hours=1))
    name = f"tag/{slugify(tag)}"
    service.render_feed_now(name, seen=None)
    with session_scope(read_only=True) as session:
        first = service.stored_document(session, name, "atom")
    assert first is not None and first.last_modified == now - timedelta(hours=1)

    with session_scope() as session:
        session.get_one(Story, newest.id).status = "unpublished"
    assert sorted(service.render_feed_now(name, seen=None)) == ["atom", "json", "rss"]
    with session_scope(read_only=True) as session:
        second = service.stored_document(session, name, "atom")
    assert second is not None and second.etag != first.etag
    # The data says two hours ago; the header must still move forward past what was served.
    assert second.last_modified > first.last_modified
    answer = get_feed(
        pipeline,
        name,
        "atom",
        **{"If-Modified-Since": first.last_modified.strftime("%a, %d %b %Y %H:%M:%S GMT")},
    )
    assert answer.status_code == 200


# --- once per burst ----------------------------------------------------------------------------


def test_a_burst_of_publishes_renders_each_feed_a_few_times(pipeline: Pipeline) -> None:
    from services.publish.service import publish_story

    tag = unique("burst")
    source = new_source()
    stories = [insert_story(source, tags=[tag]) for _ in range(30)]
    name = f"tag/{slugify(tag)}"
    # Stored once, empty, so that readers are served the stored bytes and never render.
    service.render_feed_now(name, seen=None)

    with session_scope() as session:
        for story in stories:
            publish_story(session, story_id=story.id, actor="test")

    def all_in() -> bool:
        with session_scope(read_only=True) as session:
            stored = service.stored_document(session, name, "json")
        return stored is not None and len(entry_urls(stored.body, "json")) == 30

    wait_for(all_in, what="the whole burst in its stored feed")
    assert len(entry_urls(get_feed(pipeline, name, "json").content, "json")) == 30
    with session_scope(read_only=True) as session:
        renders = session.scalar(select(Feed.renders).where(Feed.key == name))
    # Thirty changes, a handful of renders by the worker (after the first, empty one).
    assert renders is not None and 2 <= renders <= 11, renders


# --- export and the news sitemap ------------------------------------------------------------------


def test_export_writes_every_feed_atomically(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = unique("export")
    story = insert_story(new_source(), tags=[tag])
    name = f"tag/{slugify(tag)}"
    publish(story.id)
    wait_for(lambda: shows(pipeline, name, f"{SITE}/stories/{story.slug}"), what="the story in its feed")
    target = tmp_path / "site"
    (target / "feeds").mkdir(parents=True)
    (target / "feeds" / "all.rss").write_bytes(b"old")

    main(["feeds", "export", str(target)])
    assert capsys.readouterr().out.startswith("wrote ")

    for feed_name in ("all", name):
        for fmt in FORMATS:
            path = target / "feeds" / f"{feed_name}.{fmt}"
            with session_scope(read_only=True) as session:
                stored = service.stored_document(session, feed_name, fmt)
            assert stored is not None
            assert path.read_bytes() == stored.body or feed_name == "all"  # `all` may move on meanwhile
            assert path.stat().st_mtime == stored.last_modified.timestamp() or feed_name == "all"
    assert entry_urls((target / "feeds" / f"{name}.json").read_bytes(), "json") == [
        f"{SITE}/stories/{story.slug}"
    ]
    assert (target / "feeds" / "all.rss").read_bytes() != b"old"
    leftovers = [path for path in target.rglob("*") if path.name.startswith(".")]
    assert leftovers == []
    assert etree.fromstring((target / "sitemaps" / "news.xml").read_bytes()).tag == f"{SITEMAP}urlset"


def test_news_sitemap_lists_the_last_48_hours(pipeline: Pipeline) -> None:
    source = new_source()
    fresh = insert_story(source)
    publish(fresh.id)
    old = insert_story(source, status="published", published_at=utcnow() - timedelta(hours=49))
    gone = insert_story(source)
    publish(gone.id)
    unpublish(gone.id)

    def sitemap() -> dict[str, Any] | None:
        # Rendered when stories change, like the feeds: in the round after these changes.
        answer = pipeline.client.get("/sitemaps/news.xml")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/xml")
        root = etree.fromstring(answer.content)
        urls = {url.findtext(f"{SITEMAP}loc"): url for url in root.findall(f"{SITEMAP}url")}
        shown = f"{SITE}/stories/{fresh.slug}" in urls and f"{SITE}/stories/{gone.slug}" not in urls
        return urls if shown else None

    urls = wait_for(sitemap, what="the sitemap after the changes")
    assert f"{SITE}/stories/{old.slug}" not in urls
    assert f"{SITE}/stories/{gone.slug}" not in urls
    news = urls[f"{SITE}/stories/{fresh.slug}"].find(f"{NEWS}news")
    assert news.findtext(f"{NEWS}title") == fresh.headline
    assert news.findtext(f"{NEWS}publication/{NEWS}name") == "Newsroom"
    assert news.findtext(f"{NEWS}publication/{NEWS}language") == "uk"
    assert news.findtext(f"{NEWS}publication_date").endswith("Z")
