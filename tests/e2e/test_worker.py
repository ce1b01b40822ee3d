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
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared import celery
from shared.db import session_scope
from shared.errors import SkipEvent
from shared.events import claim_gathered, release_claims
from shared.models import OutboxEvent, Source, Story, utcnow
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
    # Each ran once, the ingest in a run the broker's message started, the publish in the
    # same worker right after the ingest committed.
    assert runs.get(f"newsroom:runs:{ingest.id}") == b"1"
    assert runs.get(f"newsroom:runs:{publish.id}") == b"1"

    def batch_line(task: str, event_id: int) -> str | None:
        for line in pipeline.log("worker").splitlines():
            if f"task {task}: " in line and str(event_id) in line.rsplit(": ", 1)[-1].split(","):
                return line
        return None

    line = wait_for(lambda: batch_line("publish.publish_story", publish.id), what="the publish's run logged")
    assert "here, right after the commit that wrote them" in line
    assert "here" not in (batch_line("ingest.process_receipt", ingest.id) or "here")


def _gathered(task: str, *numbers: int) -> list[int]:
    # Written directly (as emit does, but without its relay), marked sent as emit does, so
    # that the scheduler's sweep leaves them alone.
    with session_scope() as session:
        rows = [OutboxEvent(task=task, kwargs={"n": n}, gather=True, sent_at=utcnow()) for n in numbers]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _outbox(ids: list[int]) -> list[OutboxEvent]:
    with session_scope(read_only=True) as session:
        query = select(OutboxEvent).where(OutboxEvent.id.in_(ids)).order_by(OutboxEvent.id)
        return list(session.scalars(query))


def test_gathered_events_run_together_and_once(pipeline: Pipeline) -> None:
    task = f"test.gathered-{secrets.token_hex(3)}"
    ids = _gathered(task, 0, 1, 2, 3, 4)
    other = _gathered(f"{task}-other", 99)
    seen: list[tuple[int, int]] = []

    def step(_session: object, kwargs: dict[str, int], prepared: int) -> None:
        seen.append((kwargs["n"], prepared))

    assert celery.run_gathered(task, step, limit=50, prepare=lambda _, kwargs: kwargs["n"] * 10) == 5
    assert seen == [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]
    assert all(row.done_at for row in _outbox(ids))
    assert celery.run_gathered(task, step, limit=50) == 0
    assert len(seen) == 5
    assert _outbox(other)[0].done_at is None
    with session_scope() as session:  # not left for the sweep to send
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(other)).values(done_at=utcnow()))


def test_a_gathered_event_that_fails_goes_alone_and_the_rest_commit(pipeline: Pipeline) -> None:
    task = f"test.gathered-{secrets.token_hex(3)}"
    ids = _gathered(task, 0, 1, 2)
    names = [f"test-gathered-{secrets.token_hex(3)}-{n}" for n in range(3)]

    def step(session: Session, kwargs: dict[str, int], _: object) -> None:
        session.add(Source(name=names[kwargs["n"]]))
        if kwargs["n"] == 1:
            raise RuntimeError("this one is poison")
        if kwargs["n"] == 2:
            raise SkipEvent("nothing to do")

    assert celery.run_gathered(task, step, limit=50) == 1
    first, poison, skipped = _outbox(ids)
    assert first.done_at and skipped.done_at
    # Sent on its own (a message of its own, retried and capped like any event).
    assert (poison.done_at, poison.gather) == (None, False)
    with session_scope() as session:
        # Only what the steps that went through wrote is there: the savepoints took the rest.
        assert session.scalars(select(Source.name).where(Source.name.in_(names))).all() == [names[0]]
        session.execute(update(OutboxEvent).where(OutboxEvent.id == poison.id).values(done_at=utcnow()))


def test_a_gathered_event_whose_run_never_finished_goes_alone(pipeline: Pipeline) -> None:
    task = f"test.gathered-{secrets.token_hex(3)}"
    died, fresh = _gathered(task, 0, 1)
    with session_scope(read_only=True) as session:  # a run took the first, and its worker died
        claimed, _ = claim_gathered(session, task, limit=1)
    assert [event.id for event in claimed] == [died]
    release_claims(claimed)  # its claim ran out
    seen: list[int] = []
    assert celery.run_gathered(task, lambda _s, kwargs, _p: seen.append(kwargs["n"]), limit=50) == 1
    assert seen == [1]
    again, ran = _outbox([died, fresh])
    assert (again.done_at, again.gather) == (None, False) and ran.done_at
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id == died).values(done_at=utcnow()))


def test_a_database_fault_fails_the_whole_batch(pipeline: Pipeline) -> None:
    task = f"test.gathered-{secrets.token_hex(3)}"
    ids = _gathered(task, 0, 1)

    def step(_session: object, kwargs: dict[str, int], _: object) -> None:
        if kwargs["n"] == 1:
            raise OperationalError("UPDATE", {}, Exception("database is locked"))

    with pytest.raises(OperationalError):
        celery.run_gathered(task, step, limit=50)
    # Nothing taken, and not claimed any more: the task's retry runs them (alone, as a
    # batch that failed may fail again).
    assert all(row.done_at is None and row.gather for row in _outbox(ids))
    with session_scope(read_only=True) as session:
        events, _ = claim_gathered(session, task, limit=50)
    assert [(event.id, event.runs) for event in events] == [(ids[0], 2), (ids[1], 2)]
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(done_at=utcnow()))
