"""Scheduled publishing through the real scheduler and worker: restarts, two schedulers, embargoes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.models import utcnow
from tests.helpers.desk import (
    WORKER,
    Desk,
    TaggedPartner,
    actions,
    assert_published_once,
    make_desk,
    row,
    soon,
    tagged_partner,
    watch_until_published,
)
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline


@pytest.fixture
def desk(pipeline: Pipeline) -> Desk:
    return make_desk(pipeline)


@pytest.fixture
def partner(desk: Desk) -> Iterator[TaggedPartner]:
    with tagged_partner(desk) as tagged:
        yield tagged


def test_schedule_survives_a_restart_of_worker_and_scheduler(
    pipeline: Pipeline, desk: Desk, partner: TaggedPartner
) -> None:
    story_id = desk.story()
    at = soon(2)
    answer = desk.publish(story_id, at=at.isoformat(), labels=["breaking"])
    assert answer["status"] == "scheduled"
    pipeline.stop("scheduler")
    pipeline.stop("worker")
    try:
        # Nothing runs: the time passes, and the schedule waits in the database.
        time.sleep(max(0.0, (at - utcnow()).total_seconds()) + 0.5)
        assert desk.get(story_id)["status"] == "scheduled"
        assert desk.page(answer["slug"])[0] == 404
    finally:
        pipeline.start("worker", *WORKER)
        pipeline.start("scheduler", "scheduler")
    watch_until_published(desk, [story_id], at)
    assert_published_once(desk, partner, story_id, at)
    assert row(story_id).label_names == ["breaking"]
    status, text = desk.page(answer["slug"])
    assert status == 200 and f"Breaking {answer['headline']}" in text


def test_restart_before_the_time_then_published_on_time(
    pipeline: Pipeline, desk: Desk, partner: TaggedPartner
) -> None:
    story_id = desk.story()
    at = soon(3)
    desk.publish(story_id, at=at.isoformat())
    pipeline.stop("scheduler")
    pipeline.stop("worker", kill=True)
    pipeline.start("worker", *WORKER)
    pipeline.start("scheduler", "scheduler")
    assert utcnow() < at, "the restart took longer than the schedule's lead; raise it"
    watch_until_published(desk, [story_id], at)
    assert_published_once(desk, partner, story_id, at)


def test_two_schedulers_publish_each_story_once(
    pipeline: Pipeline, desk: Desk, partner: TaggedPartner
) -> None:
    pipeline.start("scheduler2", "scheduler")
    try:
        story_ids = [desk.story() for _ in range(5)]
        at = soon(1.5)
        for story_id in story_ids:
            assert desk.publish(story_id, at=at.isoformat())["status"] == "scheduled"
        watch_until_published(desk, story_ids, at)
    finally:
        pipeline.stop("scheduler2")
    for story_id in story_ids:
        assert_published_once(desk, partner, story_id, at)


def test_wire_embargo_from_an_auto_publish_source(
    pipeline: Pipeline, desk: Desk, partner: TaggedPartner
) -> None:
    name, wire = pipeline.source(auto_publish=True)
    embargo = soon(2)
    item: dict[str, Any] = {
        "uri": f"urn:embargo:{desk.tag}",
        "type": "text",
        "version": "1",
        "language": "en",
        "embargoed": embargo.isoformat(),
        "headlines": [{"role": "main", "value": f"Embargoed until {embargo:%H:%M:%S}"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Not before the time.</p>"}],
        "subjects": [{"name": desk.tag}],
    }
    answer = pipeline.client.post(
        f"/v1/wire/{name}",
        content=json.dumps(item),
        headers={**wire, "Content-Type": "application/ninjs+json"},
    )
    assert answer.status_code == 202, answer.text
    [entry] = pipeline.wait_receipt(answer.json()["receipt"], wire)["items"]
    story_id = entry["story_id"]

    def scheduled_or_later() -> str | None:
        status: str = desk.get(story_id)["status"]
        return status if status != "ingested" else None

    # The auto-publish task runs on the worker; before the embargo it can only schedule.
    first = wait_for(scheduled_or_later, what="the auto-publish task")
    if utcnow() < embargo:
        assert first == "scheduled"
    watch_until_published(desk, [story_id], embargo)
    assert_published_once(desk, partner, story_id, embargo)
    assert row(story_id).embargo_until == embargo


def test_unpublish_leaves_pages_feeds_and_partners(
    pipeline: Pipeline, desk: Desk, partner: TaggedPartner
) -> None:
    story_id = desk.story(section="world")
    answer = desk.publish(story_id)
    slug, headline = answer["slug"], answer["headline"]

    def in_feeds() -> bool:
        return all(
            headline in pipeline.client.get(path).text
            for path in ("/feeds/all.atom", "/feeds/section/world.rss", f"/feeds/tag/{desk.tag}.json")
        )

    wait_for(in_feeds, what="the story in its feeds")
    wait_for(lambda: partner.events(slug) == ["story.published"], what="the published push")

    killed = desk.unpublish(story_id, reason="Taken down on legal advice")
    assert killed["event"] == "story.killed"
    desk.page_when(slug, lambda status, _: status == 404, "the page gone")
    desk.front_when(lambda html: f"/stories/{slug}" not in html, "the story off the front page")
    wait_for(
        lambda: (
            not any(
                headline in pipeline.client.get(path).text
                for path in ("/feeds/all.atom", "/feeds/section/world.rss", f"/feeds/tag/{desk.tag}.json")
            )
        ),
        what="the story gone from every feed",
    )
    wait_for(lambda: partner.events(slug) == ["story.published", "story.killed"], what="the killed push")
    assert desk.unpublish(story_id, reason="again")["event"] is None
    history = [(a, note) for _, a, _, note in actions(story_id)]
    assert history[-2:] == [("published", None), ("unpublished", "Taken down on legal advice")]
