"""The editor's API and the publish state machine, on each database, with the real pipeline running."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from services.publish import service
from shared.db import session_scope
from shared.errors import SkipEvent
from shared.models import utcnow
from tests.helpers.desk import Desk, TaggedPartner, actions, row, tagged_partner, utc_iso
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline

KYIV = ZoneInfo("Europe/Kyiv")


def test_first_publish_stamps_the_time_and_a_revision(desk: Desk, partner: TaggedPartner) -> None:
    story_id = desk.story(labels=[])
    before = utcnow()
    answer = desk.publish(story_id, labels=["exclusive"])
    after = utcnow()
    assert answer["event"] == "story.published"
    assert answer["status"] == "published"
    assert answer["version"] == 2
    assert answer["labels"] == ["exclusive"]
    assert answer["status_url"] == f"/v1/stories/{story_id}"
    story = row(story_id)
    assert story.published_at is not None and before <= story.published_at <= after
    assert story.updated_at is None
    history = actions(story_id)
    assert [(n, a) for n, a, _, _ in history] == [(1, "ingested"), (2, "published")]
    assert history[1][2] is not None and history[1][2].startswith("editor:")

    detail = desk.get(story_id)
    assert [r["action"] for r in detail["revisions"]] == ["ingested", "published"]
    assert all(r["at"] and r["actor"] for r in detail["revisions"])
    assert detail["labels"] == ["exclusive"]
    assert detail["body_html"].startswith("<p>Body of")
    [delivery] = [d for d in detail["deliveries"] if d["partner"] == partner.name]
    assert (delivery["event"], delivery["version"]) == ("story.published", 2)
    assert delivery["id"].startswith("msg_")
    # The partner's delivery row is written in the same transaction as the publish.
    assert partner.delivery_events(story_id) == ["story.published"]
    wait_for(lambda: partner.events(story.slug) == ["story.published"], what="the push at the partner")

    status, text = desk.page(story.slug)
    assert status == 200
    assert f"Exclusive {story.headline}" in text


def test_at_in_the_past_backdates_and_pages_show_newsroom_time(desk: Desk) -> None:
    story_id = desk.story(
        headline="Chinese citizens are fighting for Russia — a column",
        lede="Ukrainian forces have captured two Chinese nationals",
        genre="opinion",
        section="opinion",
        author_name="Vitaly Portnikov",
        author_bio="journalist, National Shevchenko Prize laureate",
        source_url="https://example.org/original",
        disclaimer="The editorial staff does not always share the opinions expressed by the blog authors.",
        tags=["China", "Russia", desk.tag],
    )
    answer = desk.publish(story_id, at="2025-04-09T10:52:00+03:00")
    assert answer["event"] == "story.published"
    # Every column carries "opinion", whatever the editor chose.
    assert answer["labels"] == ["opinion"]
    story = row(story_id)
    assert story.published_at == datetime(2025, 4, 9, 7, 52, tzinfo=UTC)
    assert answer["published_at"] == "2025-04-09T07:52:00Z"

    status, text = desk.page(story.slug)
    assert status == 200
    assert (
        "OPINION Chinese citizens are fighting for Russia — a column 9 April, 2025 Wednesday 10:52 "
        "Ukrainian forces have captured two Chinese nationals"
    ) in text
    assert "About the author. Vitaly Portnikov, journalist, National Shevchenko Prize laureate" in text
    assert "The editorial staff does not always share the opinions expressed by the blog authors." in text
    assert f"Tags: China Russia {desk.tag}" in text
    html = desk.pipeline.client.get(f"/stories/{story.slug}").text
    assert '<a href="https://example.org/original" rel="external noopener">Source</a>' in html
    assert '<time datetime="2025-04-09T10:52:00+03:00">' in html
    assert f'<link rel="canonical" href="http://newsroom.test/stories/{story.slug}">' in html
    assert '<link rel="alternate" type="application/atom+xml" href="/feeds/section/opinion.atom"' in html


def test_republishing_unchanged_is_a_no_op(desk: Desk, partner: TaggedPartner) -> None:
    story_id = desk.story()
    first = desk.publish(story_id)
    again = desk.publish(story_id)
    assert again["event"] is None
    assert again["version"] == first["version"]
    assert again["published_at"] == first["published_at"]
    assert [a for _, a, _, _ in actions(story_id)] == ["ingested", "published"]
    assert partner.delivery_events(story_id) == ["story.published"]


def test_substantive_change_earns_updated_and_a_note(desk: Desk, partner: TaggedPartner) -> None:
    story_id = desk.story(lede="The first lede")
    published = desk.publish(story_id)
    slug = published["slug"]

    edited = desk.patch(story_id, lede="The corrected lede", expected_version=published["version"])
    assert edited["version"] == published["version"] + 1
    assert edited["has_pending_changes"] is True
    assert edited["lede"] == "The first lede"  # readers keep the published text until the next publish
    assert "The first lede" in desk.page(slug)[1]

    before = utcnow()
    updated = desk.publish(story_id, note="An earlier version misstated the lede.")
    assert updated["event"] == "story.updated"
    assert updated["labels"] == ["updated"]
    assert updated["published_at"] == published["published_at"]
    assert updated["has_pending_changes"] is False
    story = row(story_id)
    assert story.updated_at is not None and story.updated_at >= before
    assert story.correction_note == "An earlier version misstated the lede."
    assert [a for _, a, _, _ in actions(story_id)] == ["ingested", "published", "edited", "updated"]
    assert actions(story_id)[-1][3] == "An earlier version misstated the lede."

    status, text = desk.page_when(slug, lambda _, text: "The corrected lede" in text, "the corrected page")
    assert status == 200
    assert "The corrected lede" in text and "The first lede" not in text
    assert f"Updated {story.headline}" in text  # the label above the headline
    assert "Updated " in text.split("Body of")[1]
    assert "An earlier version misstated the lede." in text
    assert partner.delivery_events(story_id) == ["story.published", "story.updated"]


def test_silent_fix_stamps_the_time_without_the_label(desk: Desk) -> None:
    story_id = desk.story(labels=[])
    desk.publish(story_id, labels=["breaking"])
    desk.patch(story_id, body_html="<p>Body, with a typo fixed.</p>")
    answer = desk.publish(story_id, silent=True)
    assert answer["event"] == "story.updated"
    assert answer["labels"] == ["breaking"]
    assert answer["updated_at"] is not None
    assert row(story_id).body_text == "Body, with a typo fixed."


def test_labels_and_tags_are_not_substantive(desk: Desk) -> None:
    story_id = desk.story()
    desk.publish(story_id)
    labelled = desk.publish(story_id, labels=["breaking", "exclusive"])
    assert labelled["event"] == "story.updated"
    assert labelled["labels"] == ["breaking", "exclusive"]
    assert labelled["updated_at"] is None  # a label is not news to readers
    desk.page_when(labelled["slug"], lambda _, text: "Breaking" in text, "the labelled page")

    desk.patch(story_id, tags=["Kyiv", desk.tag])
    retagged = desk.publish(story_id, labels=[])
    assert retagged["event"] == "story.updated"
    assert retagged["labels"] == []
    assert retagged["tags"] == ["Kyiv", desk.tag]
    assert retagged["updated_at"] is not None


@pytest.mark.parametrize(
    ("labels", "detail"),
    [
        (["scoop"], "labels: unknown scoop"),
        (["opinion"], "labels: opinion is set by the newsroom"),
        (["updated"], "labels: updated is set by the newsroom"),
    ],
)
def test_editors_set_only_exclusive_and_breaking(desk: Desk, labels: list[str], detail: str) -> None:
    story_id = desk.story()
    answer = desk.publish(story_id, expect=422, labels=labels)
    assert answer["error"] == "unprocessable"
    assert answer["detail"].startswith(detail)
    assert row(story_id).status == "ingested"


def test_stale_expected_version_is_409_and_changes_nothing(desk: Desk) -> None:
    story_id = desk.story()
    published = desk.publish(story_id, expected_version=1)
    version = published["version"]
    history = actions(story_id)

    assert desk.publish(story_id, expect=409, expected_version=1, labels=["breaking"])["error"] == "conflict"
    assert desk.patch(story_id, expect=409, headline="Changed", expected_version=1)["error"] == "conflict"
    assert desk.unpublish(story_id, expect=409, expected_version=1)["error"] == "conflict"

    story = row(story_id)
    assert story.revision == version and story.status == "published"
    assert story.label_names == [] and story.pending is None
    assert actions(story_id) == history

    edited = desk.patch(story_id, headline="Changed", expected_version=version)
    assert edited["version"] == version + 1
    assert desk.unpublish(story_id, expected_version=version + 1)["event"] == "story.killed"


def test_bad_input(desk: Desk) -> None:
    missing = 2_000_000_000
    assert desk.publish(missing, expect=404)["error"] == "not_found"
    assert desk.unpublish(missing, expect=404)["error"] == "not_found"
    assert desk.patch(missing, expect=404, headline="x")["error"] == "not_found"
    assert desk.pipeline.client.get(f"/v1/stories/{missing}", headers=desk.headers).status_code == 404

    story_id = desk.story()
    for at, detail in [
        ("2030-01-01T10:00:00", "at: '2030-01-01T10:00:00' has no UTC offset"),
        ("next tuesday", "at: not an ISO 8601 time"),
        (12, "at: Input should be a valid string"),
    ]:
        answer = desk.publish(story_id, expect=422, at=at)
        assert answer["detail"].startswith(detail), answer
    assert desk.publish(story_id, expect=422, silently=True)["detail"].startswith("silently: Extra inputs")
    assert desk.patch(story_id, expect=422, headline="  ")["detail"] == "headline: must not be empty"
    assert desk.patch(story_id, expect=422, body_html="<p> </p>")["detail"] == "body_html: must not be empty"
    assert desk.patch(story_id, expect=422, slug="x")["detail"].startswith("cannot edit slug")
    assert desk.patch(story_id, expect=422)["detail"].startswith("nothing to change")
    assert desk.patch(story_id, expect=422, lede="x", expected_version=True)["detail"].startswith(
        "expected_version"
    )
    assert desk.unpublish(story_id, expect=422, reason="")["detail"].startswith("reason:")
    assert actions(story_id) == [(1, "ingested", "test", None)]

    headless = desk.story(headline=" ")
    bodyless = desk.story(body_html="<p></p>")
    for empty in (headless, bodyless):
        answer = desk.publish(empty, expect=422)
        assert "has no headline or no body" in answer["detail"]
        # Also when scheduling: the failure belongs to the editor now, not to the scheduler later.
        desk.publish(empty, expect=422, at=utc_iso(utcnow() + timedelta(days=1)))
        assert row(empty).status == "ingested"


def test_unpublish_then_publish_again(desk: Desk, partner: TaggedPartner) -> None:
    story_id = desk.story()
    published = desk.publish(story_id)
    slug = published["slug"]

    killed = desk.unpublish(story_id, reason="Legal asked us to take it down")
    assert killed["event"] == "story.killed"
    assert killed["status"] == "unpublished"
    assert killed["unpublished_at"] is not None
    desk.page_when(slug, lambda status, _: status == 404, "the page gone")
    desk.front_when(lambda html: f"/stories/{slug}" not in html, "the story off the front page")

    again = desk.unpublish(story_id, reason="twice")
    assert again["event"] is None
    assert again["version"] == killed["version"]
    history = actions(story_id)
    assert [a for _, a, _, _ in history] == ["ingested", "published", "unpublished"]
    assert history[-1][3] == "Legal asked us to take it down"
    assert partner.delivery_events(story_id) == ["story.published", "story.killed"]

    # Edits to an unpublished story apply at once; publishing it again compares with what readers saw.
    desk.patch(story_id, headline="A corrected headline")
    back = desk.publish(story_id)
    assert back["event"] == "story.published"
    assert back["published_at"] == published["published_at"]
    assert back["unpublished_at"] is None
    assert back["labels"] == ["updated"]
    assert back["updated_at"] is not None
    desk.page_when(slug, lambda status, _: status == 200, "the page back")
    assert partner.delivery_events(story_id) == ["story.published", "story.killed", "story.published"]


def test_future_at_schedules_and_the_story_appears_nowhere(desk: Desk) -> None:
    story_id = desk.story()
    at = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    answer = desk.publish(story_id, at=at.astimezone(KYIV).isoformat(), labels=["exclusive"])
    assert answer["event"] is None
    assert answer["status"] == "scheduled"
    assert answer["publish_at"] == utc_iso(at)
    assert answer["published_at"] is None
    assert desk.page(answer["slug"])[0] == 404
    listed = desk.pipeline.client.get("/v1/stories", params={"status": "scheduled"}, headers=desk.headers)
    assert story_id in [s["id"] for s in listed.json()["stories"]]
    history = actions(story_id)
    assert history[-1][1] == "scheduled" and history[-1][3] == f"at {at.isoformat()}"

    cancelled = desk.unpublish(story_id, reason="Not needed after all")
    assert cancelled["status"] == "ingested"
    assert cancelled["publish_at"] is None
    assert actions(story_id)[-1][1:] == ("unscheduled", actions(story_id)[-1][2], "Not needed after all")
    with session_scope() as session:
        assert service.publish_scheduled(session, story_id=story_id, now=at + timedelta(minutes=1)) is None
    assert row(story_id).status == "ingested"


def test_list_filters(desk: Desk) -> None:
    word = secrets.token_hex(4)
    world = desk.story(headline=f"World {word}", section="world")
    sport = desk.story(headline=f"Sport {word}", section="sport", lede=f"A lede about {word}s")
    desk.story(headline="Unrelated")
    desk.publish(sport)

    def ids(**params: str) -> list[int]:
        answer = desk.pipeline.client.get("/v1/stories", params=params, headers=desk.headers)
        assert answer.status_code == 200, answer.text
        return [s["id"] for s in answer.json()["stories"]]

    assert ids(q=word) == [sport, world]
    assert ids(q=word, status="published") == [sport]
    assert ids(q=word, section="World") == [world]
    assert ids(q=f"about {word}") == [sport]
    answer = desk.pipeline.client.get("/v1/stories", params={"status": "live"}, headers=desk.headers)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("status: one of")
    assert (
        desk.pipeline.client.get("/v1/stories", params={"limit": 0}, headers=desk.headers).status_code == 422
    )
    assert desk.pipeline.client.get("/v1/stories").status_code == 401


def test_wire_update_waits_for_the_next_publish(desk: Desk, pipeline: Pipeline) -> None:
    # What ingest does with a newer wire version of a published story: it waits in ``pending``.
    story_id = desk.story(headline="Wire headline", body_html="<p>First.</p>")
    desk.publish(story_id)
    with session_scope() as session:
        story = service.get_story(session, story_id, lock=True)
        story.pending = {
            "headline": "Wire headline, corrected",
            "body_html": "<p>Second.</p>",
            "body_text": "Second.",
            "labels": [],
            "tags": [desk.tag],
        }
        story.revision += 1
    assert row(story_id).headline == "Wire headline"
    answer = desk.publish(story_id)
    assert answer["event"] == "story.updated"
    assert answer["headline"] == "Wire headline, corrected"
    assert answer["labels"] == ["updated"]


@pytest.mark.parametrize("expected_version", [None, 1])
def test_concurrent_publishes_one_wins(
    desk: Desk, partner: TaggedPartner, expected_version: int | None
) -> None:
    story_id = desk.story()
    callers = 6
    barrier = threading.Barrier(callers)
    answers: list[tuple[int, dict[str, Any]]] = []
    body = {"labels": ["exclusive"], "expected_version": expected_version}

    def publish() -> None:
        with TestClient(desk.pipeline.client.app) as client:
            barrier.wait()
            answer = client.post(f"/v1/stories/{story_id}/publish", headers=desk.headers, json=body)
            answers.append((answer.status_code, answer.json()))

    with tagged_partner(desk) as second:
        threads = [threading.Thread(target=publish) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        winners = [a for status, a in answers if status == 202 and a["event"] == "story.published"]
        others = [(status, a.get("event")) for status, a in answers if a not in winners]
        assert len(answers) == callers and len(winners) == 1
        assert all(other in ((409, None), (202, None)) for other in others), others
        if expected_version is not None:
            assert {status for status, _ in others} == {409}
        assert [a for _, a, _, _ in actions(story_id)] == ["ingested", "published"]
        story = row(story_id)
        assert story.published_at is not None and utc_iso(story.published_at) == winners[0]["published_at"]
        for each in (partner, second):
            assert each.delivery_events(story_id) == ["story.published"]
            wait_for(lambda p=each: p.events(story.slug) == ["story.published"], what="one push per partner")


def test_auto_publish_respects_the_editors(desk: Desk) -> None:
    def auto_publish(story_id: int) -> str | None:
        try:
            with session_scope() as session:
                return service.publish_story(
                    session, story_id=story_id, actor="source:wire", automatic=True
                ).event
        except SkipEvent:
            return None

    taken_down = desk.story()
    desk.publish(taken_down)
    desk.unpublish(taken_down, reason="Editor's call")
    assert auto_publish(taken_down) is None
    assert row(taken_down).status == "unpublished"

    scheduled = desk.story()
    at = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    desk.publish(scheduled, at=utc_iso(at))
    assert auto_publish(scheduled) is None
    assert (row(scheduled).status, row(scheduled).publish_at) == ("scheduled", at)
    assert desk.unpublish(scheduled, reason="cleanup")["status"] == "ingested"

    # The source's own embargo schedule, lifted early by a newer wire version: it goes out now.
    embargoed = desk.story(embargo_until=at)
    assert auto_publish(embargoed) is None
    assert row(embargoed).status == "scheduled"
    with session_scope() as session:
        story = service.get_story(session, embargoed, lock=True)
        story.pending = {**(story.pending or {}), "embargo_until": None}
        story.revision += 1
    assert auto_publish(embargoed) == "story.published"
    assert row(embargoed).embargo_until is None
