"""Identity and versions: (source, guid) is a story and only a newer version wins, even under races."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from services.ingest.parsers.base import ParsedItem
from services.ingest.service import store_item
from shared.db import session_scope
from shared.models import Revision, Source, Story
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline


def ninjs(uri: str, version: int, headline: str, **extra: Any) -> dict[str, Any]:
    return {
        "uri": uri,
        "version": str(version),
        "headlines": [{"value": headline}],
        "bodies": [{"contenttype": "text/html", "value": f"<p>{headline}</p>"}],
        **extra,
    }


def post(pipeline: Pipeline, name: str, wire: dict[str, str], entry: dict[str, Any]) -> dict[str, Any]:
    answer = pipeline.client.post(f"/v1/wire/{name}", json=entry, headers=wire)
    assert answer.status_code == 202, answer.text
    receipt = pipeline.wait_receipt(answer.json()["receipt"], wire)
    [item] = receipt["items"]
    return item  # type: ignore[no-any-return]


def revisions(story_id: int) -> list[tuple[int, str, str]]:
    with session_scope(read_only=True) as session:
        rows = session.scalars(
            select(Revision).where(Revision.story_id == story_id).order_by(Revision.number)
        )
        return [(r.number, r.action, r.snapshot["headline"]) for r in rows]


def test_versions_through_the_api(pipeline: Pipeline) -> None:
    name, wire = pipeline.source()
    uri = f"urn:versions:{secrets.token_hex(4)}"
    created = post(pipeline, name, wire, ninjs(uri, 2, "Second"))
    assert created["outcome"] == "created"
    story_id = created["story_id"]
    assert post(pipeline, name, wire, ninjs(uri, 2, "Second"))["outcome"] == "unchanged"
    assert post(pipeline, name, wire, ninjs(uri, 1, "First"))["outcome"] == "stale"
    assert post(pipeline, name, wire, ninjs(uri, 3, "Third")) == {
        "guid": uri,
        "story_id": story_id,
        "outcome": "updated",
        "error": None,
    }
    # The same text under a newer version changes nothing, but the version is remembered...
    assert post(pipeline, name, wire, ninjs(uri, 5, "Third"))["outcome"] == "unchanged"
    # ...so version 4, older than 5, is stale even though it is newer than the text's 3.
    assert post(pipeline, name, wire, ninjs(uri, 4, "Fourth"))["outcome"] == "stale"
    assert revisions(story_id) == [(1, "ingested", "Second"), (2, "ingested", "Third")]
    with session_scope(read_only=True) as session:
        story = session.get_one(Story, story_id)
        assert (story.headline, story.wire_version, story.revision) == ("Third", 5, 2)

    # Another source's item with the same guid is another story.
    other, other_wire = pipeline.source()
    elsewhere = post(pipeline, other, other_wire, ninjs(uri, 1, "First"))
    assert elsewhere["outcome"] == "created" and elsewhere["story_id"] != story_id


def test_versions_by_time_when_there_is_no_version_number(pipeline: Pipeline) -> None:
    name, wire = pipeline.source()
    uri = f"urn:versioncreated:{secrets.token_hex(4)}"

    def at(hour: int, headline: str) -> dict[str, Any]:
        entry = ninjs(uri, 0, headline, versioncreated=f"2025-07-18T{hour:02}:00:00+03:00")
        del entry["version"]
        return entry

    assert post(pipeline, name, wire, at(12, "Noon"))["outcome"] == "created"
    assert post(pipeline, name, wire, at(10, "Morning"))["outcome"] == "stale"
    assert post(pipeline, name, wire, at(14, "Afternoon"))["outcome"] == "updated"
    assert post(pipeline, name, wire, at(14, "Afternoon"))["outcome"] == "unchanged"


def test_a_published_story_keeps_its_text_until_republished_and_a_cancel_kills_it(pipeline: Pipeline) -> None:
    name, wire = pipeline.source()
    editor = pipeline.token("editor")
    uri = f"urn:published:{secrets.token_hex(4)}"
    story_id = post(pipeline, name, wire, ninjs(uri, 1, "As published"))["story_id"]
    answer = pipeline.client.post(f"/v1/stories/{story_id}/publish", headers=editor, json={})
    assert answer.status_code == 202, answer.text

    def status() -> str:
        with session_scope(read_only=True) as session:
            return session.get_one(Story, story_id).status

    wait_for(lambda: status() == "published", what="the story published")
    assert post(pipeline, name, wire, ninjs(uri, 2, "Corrected by the wire"))["outcome"] == "updated"
    with session_scope(read_only=True) as session:
        story = session.get_one(Story, story_id)
        assert story.headline == "As published"
        assert story.pending is not None and story.pending["headline"] == "Corrected by the wire"

    canceled = post(pipeline, name, wire, ninjs(uri, 3, "Withdrawn", pubstatus="canceled"))
    assert canceled["outcome"] == "updated"
    wait_for(lambda: status() == "unpublished", what="the canceled story taken down")
    assert pipeline.client.get(f"/stories/{story_id}").status_code == 404


def test_many_versions_posted_at_once_to_two_workers(pipeline: Pipeline) -> None:
    """Versions of one guid, shuffled and posted concurrently; the worker's two processes race."""
    name, wire = pipeline.source()
    uri = f"urn:race:{secrets.token_hex(4)}"
    versions = list(range(1, 17))
    random.shuffle(versions)

    def send(version: int) -> tuple[int, int]:
        body = json.dumps(ninjs(uri, version, f"Version {version}"))
        answer = pipeline.client.post(
            f"/v1/wire/{name}", content=body, headers={**wire, "Content-Type": "application/json"}
        )
        assert answer.status_code == 202, answer.text
        return version, answer.json()["receipt"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        receipts = list(pool.map(send, versions))
    outcome = {}
    for version, receipt_id in receipts:
        [item] = pipeline.wait_receipt(receipt_id, wire)["items"]
        outcome[version] = item["outcome"]

    counts = Counter(outcome.values())
    assert counts["created"] == 1
    assert set(counts) <= {"created", "updated", "stale"}
    with session_scope(read_only=True) as session:
        [story] = session.scalars(select(Story).where(Story.guid == uri)).all()
        assert (story.wire_version, story.headline) == (16, "Version 16")
        # No lost update: every winner left exactly one revision, in rising version order.
        assert story.revision == 1 + counts["updated"]
    history = revisions(story.id)
    assert [number for number, _, _ in history] == list(range(1, story.revision + 1))
    won = [int(headline.split()[-1]) for _, _, headline in history]
    assert won == sorted(won)
    assert set(won) == {v for v, result in outcome.items() if result in ("created", "updated")}
    assert outcome[16] in ("created", "updated")


# store_item itself, from two threads with their own sessions ------------------------------


def parsed(guid: str, version: int, headline: str) -> ParsedItem:
    return ParsedItem(
        guid=guid, headline=headline, body_html=f"<p>{headline}</p>", body_text=headline, version=version
    )


def store(
    source_id: int,
    item: ParsedItem,
    *,
    stored: threading.Event | None = None,
    hold: threading.Event | None = None,
) -> tuple[str, int | None]:
    """Store an item in its own transaction; optionally say so and wait before committing."""
    with session_scope() as session:
        source = session.get_one(Source, source_id)
        result = store_item(session, source=source, item=item)
        if stored is not None:
            stored.set()
        if hold is not None:
            hold.wait(30)
    return result


def source_id(pipeline: Pipeline) -> int:
    name, _ = pipeline.source()
    with session_scope(read_only=True) as session:
        return session.scalars(select(Source.id).where(Source.name == name)).one()


@pytest.mark.parametrize(
    ("existing", "first", "second", "expected"),
    [
        (None, (3, "Three"), (2, "Two"), ("created", "stale", "Three")),
        (None, (2, "Two"), (3, "Three"), ("created", "updated", "Three")),
        (None, (2, "Two"), (2, "Two"), ("created", "unchanged", "Two")),
        (None, (2, "Two"), (2, "Other two"), ("created", "stale", "Two")),
        ((1, "One"), (3, "Three"), (2, "Two"), ("updated", "stale", "Three")),
        ((1, "One"), (2, "Two"), (3, "Three"), ("updated", "updated", "Three")),
    ],
)
def test_store_item_race(
    pipeline: Pipeline,
    existing: tuple[int, str] | None,
    first: tuple[int, str],
    second: tuple[int, str],
    expected: tuple[str, str, str],
) -> None:
    """The second writer starts while the first holds its transaction open, and must wait for it."""
    source = source_id(pipeline)
    guid = f"urn:store-race:{secrets.token_hex(4)}"
    if existing:
        assert store(source, parsed(guid, *existing))[0] == "created"
    stored, release = threading.Event(), threading.Event()
    results: dict[str, tuple[str, int | None]] = {}

    def writer(key: str, item: ParsedItem, **events: threading.Event) -> None:
        results[key] = store(source, item, **events)

    one = threading.Thread(
        target=writer, args=("first", parsed(guid, *first)), kwargs={"stored": stored, "hold": release}
    )
    one.start()
    assert stored.wait(30)
    two = threading.Thread(target=writer, args=("second", parsed(guid, *second)))
    two.start()
    # The second writer runs into the first one's lock (the row on PostgreSQL, the database
    # on SQLite) and must still be waiting while the first transaction is open.
    time.sleep(0.3)
    assert "second" not in results
    release.set()
    one.join(30)
    two.join(30)
    assert (results["first"][0], results["second"][0]) == expected[:2]
    assert results["first"][1] == results["second"][1]
    with session_scope(read_only=True) as session:
        story = session.scalars(select(Story).where(Story.source_id == source, Story.guid == guid)).one()
        assert story.headline == expected[2]
        updates = [r for r in (results["first"][0], results["second"][0]) if r == "updated"]
        assert story.revision == 1 + len(updates)


def test_store_item_free_for_all(pipeline: Pipeline) -> None:
    source = source_id(pipeline)
    guid = f"urn:free-for-all:{secrets.token_hex(4)}"
    versions = list(range(1, 9))
    random.shuffle(versions)
    barrier = threading.Barrier(len(versions))

    def writer(version: int) -> tuple[int, str]:
        barrier.wait(30)
        return version, store(source, parsed(guid, version, f"Version {version}"))[0]

    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        outcome = dict(pool.map(writer, versions))
    counts = Counter(outcome.values())
    assert counts["created"] == 1
    with session_scope(read_only=True) as session:
        story = session.scalars(select(Story).where(Story.source_id == source, Story.guid == guid)).one()
        assert (story.wire_version, story.headline, story.revision) == (8, "Version 8", 1 + counts["updated"])


def test_new_stories_with_one_headline_racing_get_distinct_slugs(pipeline: Pipeline) -> None:
    source = source_id(pipeline)
    headline = f"Same headline {secrets.token_hex(3)}"
    guids = [f"urn:slug-race:{n}:{secrets.token_hex(3)}" for n in range(6)]
    barrier = threading.Barrier(len(guids))

    def writer(guid: str) -> tuple[str, int | None]:
        barrier.wait(30)
        return store(source, parsed(guid, 1, headline))

    with ThreadPoolExecutor(max_workers=len(guids)) as pool:
        results = list(pool.map(writer, guids))
    assert [outcome for outcome, _ in results] == ["created"] * len(guids)
    with session_scope(read_only=True) as session:
        slugs = session.scalars(select(Story.slug).where(Story.source_id == source)).all()
    assert len(set(slugs)) == len(guids)
    assert sum(slug == headline.lower().replace(" ", "-") for slug in slugs) == 1
