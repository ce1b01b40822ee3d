"""The worker's own machinery: its processes, and tasks run in place in the worker that emitted them."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import pytest
import redis as redis_lib
from sqlalchemy import select

from shared.db import session_scope
from shared.failures import RUNS
from shared.models import OutboxEvent, Revision, Story
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline


def _children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(child) for child in found}


def _children_now(pid: int) -> set[int]:
    """The process's children, read straight from /proc (fast enough to catch one starting)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return {int(child) for child in listing.read().split()}
    except OSError:
        return set()


def test_a_stop_while_a_process_is_being_replaced_stops_the_new_one_too(pipeline: Pipeline) -> None:
    # The stop comes the moment the replacement exists, while the supervisor is still starting
    # it: the new process must hear it as well, or the supervisor waits out the time limit.
    for attempt in range(3):
        supervisor = pipeline.start(f"racing-worker-{attempt}", "worker", "-c", "2", "-Q", "ingest")
        try:
            first = wait_for(
                lambda supervisor=supervisor: (
                    (found := _children_now(supervisor.pid)) and len(found) == 2 and found
                ),
                timeout=30,
                what="two worker processes",
            )
            os.kill(min(first), signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not _children_now(supervisor.pid) - first and time.monotonic() < deadline:
                time.sleep(0.0005)
        finally:
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=30) == 0


def test_worker_runs_its_processes_and_replaces_one_that_dies(pipeline: Pipeline) -> None:
    supervisor = pipeline.start("extra-worker", "worker", "-c", "2", "-Q", "ingest")
    try:
        first = wait_for(
            lambda: (found := _children(supervisor.pid)) and len(found) == 2 and found,
            timeout=30,
            what="two worker processes",
        )
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(
            lambda: (
                (found := _children(supervisor.pid)) and len(found) == 2 and victim not in found and found
            ),
            timeout=30,
            what="the killed worker process replaced",
        )
        assert (first - {victim}) <= replaced
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        pipeline.processes.pop("extra-worker", None)
    assert not _children(supervisor.pid)


def test_an_auto_publish_and_its_feed_flags_commit_with_the_ingest(pipeline: Pipeline) -> None:
    name, wire = pipeline.source(auto_publish=True)
    item = {
        "uri": f"urn:worker:{secrets.token_hex(4)}",
        "headlines": [{"role": "main", "value": "Here"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Published here.</p>"}],
    }
    answer = pipeline.client.post(
        f"/v1/wire/{name}",
        content=json.dumps(item),
        headers={**wire, "Content-Type": "application/ninjs+json"},
    )
    assert answer.status_code == 202, answer.text
    receipt = pipeline.wait_receipt(answer.json()["receipt"], wire)
    story_id = receipt["items"][0]["story_id"]

    def published() -> bool:
        with session_scope(read_only=True) as session:
            return session.get_one(Story, story_id).status == "published"

    wait_for(published, timeout=30, what="the story published")

    with session_scope(read_only=True) as session:
        story = session.get_one(Story, story_id)
        rows = session.scalars(
            select(OutboxEvent).where(
                OutboxEvent.task.in_(
                    ["ingest.process_receipt", "publish.publish_story", "syndicate.story_changed"]
                )
            )
        ).all()
        mine = [
            row
            for row in rows
            if row.kwargs.get("receipt_id") == receipt["receipt"] or row.kwargs.get("story_id") == story_id
        ]
        actions = list(
            session.scalars(
                select(Revision.action).where(Revision.story_id == story_id).order_by(Revision.id)
            )
        )
    assert story.status == "published"
    assert actions == ["ingested", "published"]
    # Neither the publish nor the feed flags were written to the outbox: only the ingest's event.
    assert [row.task for row in mine] == ["ingest.process_receipt"]
    (ingest,) = mine
    assert ingest.done_at is not None
    runs = redis_lib.Redis.from_url(pipeline.env["NEWSROOM_REDIS_URL"])
    assert runs.get(f"{RUNS}:{ingest.id}") == b"1"
    # The feeds were flagged in that transaction too: a render round puts the story in the feed.
    wait_for(
        lambda: f"/stories/{story.slug}" in pipeline.client.get("/feeds/all.atom").text,
        timeout=30,
        what="the story in /feeds/all.atom",
    )
