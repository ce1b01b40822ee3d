"""The worker's own machinery: its processes, gathered events, tasks run where they were emitted."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import pytest
import redis as redis_lib
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from shared import celery
from shared.db import session_scope
from shared.events import take_gathered
from shared.models import OutboxEvent, Story, utcnow
from tests.conftest import Pipeline, wait_for
from tests.support import newsroom_environment

pytestmark = pytest.mark.pipeline


def _children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(child) for child in found}


def test_worker_runs_its_processes_and_replaces_one_that_dies(pipeline: Pipeline) -> None:
    supervisor = pipeline.start("extra-worker", "worker", "-c", "2", "-Q", "ingest")
    try:
        first = wait_for(lambda: (found := _children(supervisor.pid)) and len(found) == 2 and found,
                         timeout=30, what="two worker processes")  # fmt: skip
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


def test_time_limit_stops_a_task_in_a_single_process_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery, "_time_limits", True)
    with newsroom_environment({"NEWSROOM_TASK_TIME_LIMIT": "11"}):  # soft limit: 1 s
        started = time.monotonic()
        with pytest.raises(SoftTimeLimitExceeded), celery._time_limit("test.slow"):
            time.sleep(5)
        assert 0.9 < time.monotonic() - started < 3
        with celery._time_limit("test.quick"):
            time.sleep(0.01)
        time.sleep(1.2)  # the quick task's alarm was cancelled: nothing fires here


def test_auto_publish_runs_in_the_ingesting_worker(pipeline: Pipeline) -> None:
    name, wire = pipeline.source(auto_publish=True)
    item = {
        "uri": f"urn:worker:{secrets.token_hex(4)}",
        "headlines": [{"role": "main", "value": "Here"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Published here.</p>"}],
    }
    answer = pipeline.client.post(f"/v1/wire/{name}", content=json.dumps(item),
                                  headers={**wire, "Content-Type": "application/ninjs+json"})  # fmt: skip
    assert answer.status_code == 202, answer.text
    receipt = pipeline.wait_receipt(answer.json()["receipt"], wire)
    story_id = receipt["items"][0]["story_id"]

    def published() -> bool:
        with session_scope(read_only=True) as session:
            return session.get_one(Story, story_id).status == "published"

    wait_for(published, timeout=30, what="the story published")

    def events() -> list[OutboxEvent]:
        with session_scope(read_only=True) as session:
            tasks = ["ingest.process_receipt", "publish.publish_story"]
            rows = session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.task.in_(tasks))
                .order_by(OutboxEvent.id.desc())
                .limit(200)
            )
            mine = [row for row in rows if row.kwargs.get("receipt_id") == receipt["receipt"]
                    or row.kwargs.get("story_id") == story_id]  # fmt: skip
            return mine if all(row.done_at is not None for row in mine) and len(mine) == 2 else []

    ingest, publish = sorted(wait_for(events, timeout=30, what="both events done"), key=lambda row: row.task)
    runs = redis_lib.Redis.from_url(pipeline.env["NEWSROOM_REDIS_URL"])
    # The ingest task came through the broker (its runs are counted there); the publish
    # task ran in the same worker right after the ingest committed, never queued.
    assert runs.get(f"newsroom:runs:{ingest.id}") == b"1"
    assert runs.get(f"newsroom:runs:{publish.id}") is None


def test_gathered_events_are_taken_together_and_once(pipeline: Pipeline) -> None:
    task = f"test.gathered-{secrets.token_hex(3)}"
    with session_scope() as session:
        # Written directly (as emit does, but without its relay), and one event of another task.
        # Marked sent, as emit does, so that the scheduler's sweep leaves them alone.
        session.add_all(
            [OutboxEvent(task=task, kwargs={"n": n}, gather=True, sent_at=utcnow()) for n in range(5)]
        )
        session.add(OutboxEvent(task=f"{task}-other", kwargs={"n": 99}, gather=True, sent_at=utcnow()))
    with session_scope() as session:
        taken = take_gathered(session, task)
    assert [kwargs["n"] for _, kwargs in taken] == [0, 1, 2, 3, 4]
    with session_scope() as session:
        assert take_gathered(session, task) == []
        done = session.scalars(select(OutboxEvent.done_at).where(OutboxEvent.task == task)).all()
        assert len(done) == 5 and all(done)
        other = session.scalars(select(OutboxEvent).where(OutboxEvent.task == f"{task}-other")).one()
        assert other.done_at is None
        other.done_at = other.created_at  # not left for the sweep to send
    # A transaction that fails takes nothing: its events stay for the next run.
    with session_scope() as session:
        session.add(OutboxEvent(task=task, kwargs={"n": 5}, gather=True, sent_at=utcnow()))

    def fail_after_taking() -> None:
        with session_scope() as session:
            assert [kwargs["n"] for _, kwargs in take_gathered(session, task)] == [5]
            raise RuntimeError("the task failed")

    with pytest.raises(RuntimeError):
        fail_after_taking()
    with session_scope() as session:
        assert [kwargs["n"] for _, kwargs in take_gathered(session, task)] == [5]
