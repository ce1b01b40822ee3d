"""A page or feed missing from the API's memory is loaded once, however many readers ask at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from services.app import create_app
from services.syndicate import api, service, site
from tests.helpers.newsdesk import insert_story, new_source, publish, unique
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline

READERS = 40


def test_concurrent_readers_share_one_load(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    story = insert_story(new_source(), headline=f"Single load {unique('cache')}")
    publish(story.id)
    wait_for(lambda: _stored(f"/stories/{story.slug}"), what="the story page stored")
    wait_for(lambda: _stored(site.FRONT), what="the front page stored")

    loads: list[str] = []
    load_page, load_document = service.load_page, service.load_document

    def counted_page(path: str) -> Any:
        loads.append(path)
        time.sleep(0.05)  # a slow database: every reader arrives while the load runs
        return load_page(path)

    def counted_document(name: str, fmt: str) -> Any:
        loads.append(f"feed {name}.{fmt}")
        time.sleep(0.05)
        return load_document(name, fmt)

    monkeypatch.setattr(service, "load_page", counted_page)
    monkeypatch.setattr(service, "load_document", counted_document)
    paths = ["/", f"/stories/{story.slug}", "/feeds/all.atom"]

    app = create_app()
    cache = api._cache(app)
    wait_for(lambda: cache._listening, what="the page cache to listen for changes")

    async def read() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://newsroom.test") as client:
            return await asyncio.gather(*(client.get(path) for path in paths for _ in range(READERS)))

    # A render round elsewhere may announce a change while the readers read (every copy is
    # then loaded afresh): such a try is made again.
    for _ in range(5):
        cache._reset(listening=True)
        loads.clear()
        generation = cache.generation
        answers = asyncio.run(read())
        if cache.generation == generation:
            break
    assert {answer.status_code for answer in answers} == {200}
    for n, path in enumerate(paths):
        bodies = {answer.content for answer in answers[n * READERS : (n + 1) * READERS]}
        assert len(bodies) == 1, path  # every reader got the same page
    # One load per page: the story page's stored part and its "More news" list, the front
    # page and the feed; not one per reader.
    assert sorted(loads) == sorted(["/", f"/stories/{story.slug}", site.MORE_NEWS, "feed all.atom"]), loads


def test_a_failed_load_leaves_the_waiting_readers_to_load_for_themselves() -> None:
    cache = object.__new__(api.FeedCache)  # no Redis listener: only the loading is tried
    cache._loading = {}
    cache._generation = 0
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        return "page"

    async def readers() -> list[Any]:
        return await asyncio.gather(*(cache.load_once("/", flaky) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(readers())
    assert isinstance(results[0], RuntimeError)
    assert results[1:] == ["page"] * 4
    assert cache._loading == {}


def _stored(path: str) -> site.StoredPage | None:
    page = service.load_page(path)
    return page if page is not None and page.body is not None else None
