"""Schedules and embargoes with a controlled clock, across Kyiv's daylight-saving changes.

The scheduled times lie weeks (or decades) ahead, so the pipeline's own scheduler
leaves these stories alone; the tests play the scheduler with ``publish_scheduled``.
Every story published at a future time is taken down again, so other tests' pages
and feeds stay as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.publish import service
from shared.db import session_scope
from shared.models import utcnow
from tests.helpers.desk import Desk, TaggedPartner, actions, row, text_of, utc_iso

pytestmark = pytest.mark.pipeline

KYIV = ZoneInfo("Europe/Kyiv")


@pytest.fixture
def cleanup(desk: Desk) -> Iterator[list[int]]:
    """Stories to take down after the test (their published times lie in the future)."""
    story_ids: list[int] = []
    yield story_ids
    for story_id in story_ids:
        with session_scope() as session:
            service.unpublish_story(session, story_id=story_id, reason="test cleanup", actor="test")


def run_scheduler(story_id: int, now: datetime) -> str | None:
    """What the scheduler's task does for one story at ``now``: the event announced, if any."""
    with session_scope() as session:
        outcome = service.publish_scheduled(session, story_id=story_id, now=now)
        return outcome.event if outcome else None


def later(days: int = 30) -> datetime:
    return (utcnow() + timedelta(days=days)).replace(microsecond=0)


def test_published_at_its_time_never_early_and_once(
    desk: Desk, partner: TaggedPartner, cleanup: list[int]
) -> None:
    story_id = desk.story()
    cleanup.append(story_id)
    at = later()
    answer = desk.publish(story_id, at=utc_iso(at), labels=["exclusive"], note="Scheduled note")
    assert (answer["status"], answer["publish_at"], answer["event"]) == ("scheduled", utc_iso(at), None)

    assert run_scheduler(story_id, at - timedelta(seconds=1)) is None
    assert row(story_id).status == "scheduled"
    assert run_scheduler(story_id, at) == "story.published"
    assert run_scheduler(story_id, at + timedelta(seconds=1)) is None

    story = row(story_id)
    assert story.status == "published"
    assert story.published_at == at and story.publish_at is None
    assert story.label_names == ["exclusive"]  # the editor's choices, kept until the time came
    assert story.correction_note == "Scheduled note"
    assert story.pending is None
    history = actions(story_id)
    assert [a for _, a, _, _ in history] == ["ingested", "scheduled", "published"]
    assert history[-1][2] is not None and history[-1][2].startswith("scheduler for editor:")
    assert partner.delivery_events(story_id) == ["story.published"]


def test_two_schedulers_at_once_publish_once(desk: Desk, partner: TaggedPartner, cleanup: list[int]) -> None:
    story_id = desk.story()
    cleanup.append(story_id)
    at = later()
    desk.publish(story_id, at=utc_iso(at))
    barrier = threading.Barrier(4)
    events: list[str | None] = []

    def scheduler() -> None:
        barrier.wait()
        events.append(run_scheduler(story_id, at + timedelta(seconds=5)))

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, events)) == ["None", "None", "None", "story.published"]
    assert [a for _, a, _, _ in actions(story_id)].count("published") == 1
    assert partner.delivery_events(story_id) == ["story.published"]


def test_embargo_wins_over_an_earlier_at(desk: Desk, cleanup: list[int]) -> None:
    embargo = later()
    story_id = desk.story(embargo_until=embargo)
    cleanup.append(story_id)
    answer = desk.publish(story_id, at="2025-07-18T19:16:00+03:00")
    assert answer["status"] == "scheduled"
    assert answer["publish_at"] == utc_iso(embargo)
    # An editor's "publish now" cannot break it either.
    assert desk.publish(story_id)["status"] == "scheduled"

    assert run_scheduler(story_id, embargo - timedelta(seconds=1)) is None
    assert run_scheduler(story_id, embargo) == "story.published"
    assert row(story_id).published_at == embargo  # not backdated to before the embargo


def test_embargo_moved_later_by_the_wire_reschedules(desk: Desk, cleanup: list[int]) -> None:
    embargo = later()
    moved = embargo + timedelta(hours=6)
    story_id = desk.story(embargo_until=embargo, headline="Embargoed report")
    cleanup.append(story_id)
    desk.publish(story_id, labels=["exclusive"])
    # A newer wire version while scheduled: ingest replaces ``pending`` with its content.
    with session_scope() as session:
        story = service.get_story(session, story_id, lock=True)
        story.pending = {"headline": "Embargoed report, revised", "embargo_until": moved.isoformat()}
        story.revision += 1

    assert run_scheduler(story_id, embargo) is None
    story = row(story_id)
    assert (story.status, story.publish_at, story.published_at) == ("scheduled", moved, None)
    assert run_scheduler(story_id, moved - timedelta(seconds=1)) is None
    assert run_scheduler(story_id, moved) == "story.published"
    story = row(story_id)
    assert story.published_at == moved
    assert story.headline == "Embargoed report, revised"
    assert story.label_names == ["exclusive"]


def test_scheduled_update_of_a_published_story(desk: Desk, cleanup: list[int]) -> None:
    story_id = desk.story(headline="Before")
    cleanup.append(story_id)
    published = desk.publish(story_id)
    desk.patch(story_id, headline="After")
    at = later()
    answer = desk.publish(story_id, at=utc_iso(at), note="Headline corrected.")
    assert (answer["status"], answer["publish_at"], answer["headline"]) == (
        "published",
        utc_iso(at),
        "Before",
    )
    assert "Before" in desk.page(published["slug"])[1]

    assert run_scheduler(story_id, at) == "story.updated"
    story = row(story_id)
    assert story.headline == "After"
    assert story.updated_at == at
    assert story.published_at is not None and utc_iso(story.published_at) == published["published_at"]
    assert sorted(story.label_names) == ["updated"]


def test_a_schedule_that_cannot_happen_is_dropped(desk: Desk, cleanup: list[int]) -> None:
    at = later()
    broken = desk.story()
    desk.publish(broken, at=utc_iso(at))
    with session_scope() as session:  # the body vanished meanwhile (say, a wire update)
        story = service.get_story(session, broken, lock=True)
        story.pending = {"body_html": ""}
        story.revision += 1
    assert run_scheduler(broken, at) is None
    story = row(broken)
    assert (story.status, story.publish_at) == ("ingested", None)
    scheduled_by = actions(broken)[1][2]
    number, action, actor, note = actions(broken)[-1]
    assert action == "unscheduled" and actor == f"scheduler for {scheduled_by}"
    assert note is not None and "has no headline or no body" in note
    assert run_scheduler(broken, at) is None and actions(broken)[-1][0] == number

    unchanged = desk.story()
    cleanup.append(unchanged)
    desk.publish(unchanged)
    desk.publish(unchanged, at=utc_iso(at))
    assert run_scheduler(unchanged, at) is None
    story = row(unchanged)
    assert (story.status, story.publish_at, story.updated_at) == ("published", None, None)
    assert actions(unchanged)[-1][1] == "unscheduled"


# --- daylight saving time in Europe/Kyiv ---------------------------------------------------
# Far ahead, so no real scheduler reaches them: on 29 March 2099 03:00 local (01:00 UTC)
# becomes 04:00; on 25 October 2099 04:00 local (01:00 UTC) becomes 03:00 again.


def test_spring_forward(desk: Desk, cleanup: list[int]) -> None:
    before_change = desk.story(headline="Spring, before the change")
    after_change = desk.story(headline="Spring, after the change")
    cleanup += [before_change, after_change]
    desk.publish(before_change, at="2099-03-29T02:59:00+02:00")
    # 03:30 local does not exist that night; an offset says which instant is meant.
    desk.publish(after_change, at="2099-03-29T04:30:00+03:00")
    assert row(before_change).publish_at == datetime(2099, 3, 29, 0, 59, tzinfo=UTC)
    assert row(after_change).publish_at == datetime(2099, 3, 29, 1, 30, tzinfo=UTC)

    # At 03:45 by a clock that was not put forward (00:45 UTC) only the first is due.
    assert run_scheduler(before_change, datetime(2099, 3, 29, 0, 59, tzinfo=UTC)) == "story.published"
    assert run_scheduler(after_change, datetime(2099, 3, 29, 0, 45, tzinfo=UTC)) is None
    assert run_scheduler(after_change, datetime(2099, 3, 29, 1, 29, 59, tzinfo=UTC)) is None
    assert run_scheduler(after_change, datetime(2099, 3, 29, 1, 30, tzinfo=UTC)) == "story.published"

    expected = "2099, Sunday 29 March 04:30 Spring, after the change 02:59 Spring, before the change"
    desk.front_when(lambda html: expected in text_of(html), "both stories on the front page")
    _, text = desk.page(row(after_change).slug)
    assert "Spring, after the change 29 March, 2099 Sunday 04:30" in text
    _, text = desk.page(row(before_change).slug)
    assert "Spring, before the change 29 March, 2099 Sunday 02:59" in text


def test_fall_back(desk: Desk, cleanup: list[int]) -> None:
    first = desk.story(headline="Autumn, the first 03:30")
    second = desk.story(headline="Autumn, the second 03:30")
    midnight = desk.story(headline="Autumn, just before midnight")
    cleanup += [first, second, midnight]
    desk.publish(first, at="2099-10-25T03:30:00+03:00")
    desk.publish(second, at="2099-10-25T03:30:00+02:00")
    desk.publish(midnight, at="2099-10-25T23:59:00+02:00")
    assert row(first).publish_at == datetime(2099, 10, 25, 0, 30, tzinfo=UTC)
    assert row(second).publish_at == datetime(2099, 10, 25, 1, 30, tzinfo=UTC)

    assert run_scheduler(first, datetime(2099, 10, 25, 0, 30, tzinfo=UTC)) == "story.published"
    # The wall clock has shown 03:30 once already; the second 03:30 is an hour later.
    assert run_scheduler(second, datetime(2099, 10, 25, 0, 45, tzinfo=UTC)) is None
    assert run_scheduler(second, datetime(2099, 10, 25, 1, 29, tzinfo=UTC)) is None
    assert run_scheduler(second, datetime(2099, 10, 25, 1, 30, tzinfo=UTC)) == "story.published"
    assert run_scheduler(midnight, datetime(2099, 10, 25, 21, 59, tzinfo=UTC)) == "story.published"

    expected = (
        "2099, Sunday 25 October 23:59 Autumn, just before midnight 03:30 Autumn, the second 03:30 "
        "03:30 Autumn, the first 03:30"
    )
    html = desk.front_when(lambda html: expected in text_of(html), "the three stories on the front page")
    front = text_of(html)
    assert front.count("25 October") == 1  # one day, one header, though it lasted 25 hours
    assert '<time class="news-time" datetime="2099-10-25T03:30:00+03:00">03:30</time>' in html
    assert '<time class="news-time" datetime="2099-10-25T03:30:00+02:00">03:30</time>' in html
    _, text = desk.page(row(second).slug)
    assert "Autumn, the second 03:30 25 October, 2099 Sunday 03:30" in text
