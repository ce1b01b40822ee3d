"""The outbox, its batches and the task wrapper, on a real database and Redis, without a worker."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import after_task_publish
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared import celery, tasks
from shared.batches import claim, release, run_batch
from shared.db import session_scope
from shared.errors import NotFound, SkipEvent, TransientError
from shared.failures import MAX_FAILURES, MAX_RUNS, RETRY_DELAYS, Verdict, count_run, decide, too_many_runs
from shared.models import Failure, OutboxEvent, Source, utcnow
from shared.outbox import emit, emitted, finish, run_in_transaction, running_event
from shared.tasknames import (
    BATCHES,
    DECLARED,
    DELIVER,
    PROCESS_RECEIPT,
    PUBLISH_STORY,
    STORY_CHANGED,
    TaskRef,
)
from shared.tasks import _failed, batch_task, newsroom_task
from tests.helpers.support import newsroom_environment, statements_sent


def test_time_limit_stops_a_task_in_a_single_process_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery, "_time_limits", True)
    with newsroom_environment({"NEWSROOM_TASK_TIME_LIMIT": "11"}):  # soft limit: 1 s
        started = time.monotonic()
        with pytest.raises(SoftTimeLimitExceeded), celery.time_limit("test.slow"):
            time.sleep(5)
        assert 0.9 < time.monotonic() - started < 3
        with celery.time_limit("test.quick"):
            time.sleep(0.01)
        time.sleep(1.2)  # the quick task's alarm was cancelled: nothing fires here


def _task() -> TaskRef:
    name = f"test.batched-{secrets.token_hex(3)}"
    return TaskRef(name, batch=f"{name}-batch")


def _gathered(task: TaskRef, *numbers: int) -> list[int]:
    # Written directly (as emit does, but without its relay), marked sent as emit does, so
    # that the scheduler's sweep leaves them alone.
    with session_scope() as session:
        rows = [OutboxEvent(task=task.name, kwargs={"n": n}, gather=True, sent_at=utcnow()) for n in numbers]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _outbox(ids: list[int]) -> list[OutboxEvent]:
    with session_scope(read_only=True) as session:
        query = select(OutboxEvent).where(OutboxEvent.id.in_(ids)).order_by(OutboxEvent.id)
        return list(session.scalars(query))


def test_gathered_events_run_together_and_once(newsroom: dict[str, str]) -> None:
    task = _task()
    ids = _gathered(task, 0, 1, 2, 3, 4)
    other = _gathered(_task(), 99)
    seen: list[tuple[int, int]] = []

    def step(_session: object, kwargs: dict[str, int], prepared: int) -> None:
        seen.append((kwargs["n"], prepared))

    assert run_batch(task, step, limit=50, prepare=lambda _, kwargs: kwargs["n"] * 10) == 5
    assert seen == [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]
    assert all(row.done_at for row in _outbox(ids))
    assert run_batch(task, step, limit=50) == 0
    assert len(seen) == 5
    assert _outbox(other)[0].done_at is None
    with session_scope() as session:  # not left for the sweep to send
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(other)).values(done_at=utcnow()))


def test_a_gathered_event_that_fails_goes_alone_and_the_rest_commit(newsroom: dict[str, str]) -> None:
    task = _task()
    ids = _gathered(task, 0, 1, 2)
    names = [f"test-gathered-{secrets.token_hex(3)}-{n}" for n in range(3)]

    def step(session: Session, kwargs: dict[str, int], _: object) -> None:
        session.add(Source(name=names[kwargs["n"]]))
        if kwargs["n"] == 1:
            raise RuntimeError("this one is poison")
        if kwargs["n"] == 2:
            raise SkipEvent("nothing to do")

    assert run_batch(task, step, limit=50) == 1
    first, poison, skipped = _outbox(ids)
    assert first.done_at and skipped.done_at
    # Sent on its own (a message of its own, retried and capped like any event).
    assert (poison.done_at, poison.gather) == (None, False)
    with session_scope() as session:
        # Only what the steps that went through wrote is there: the savepoints took the rest.
        assert session.scalars(select(Source.name).where(Source.name.in_(names))).all() == [names[0]]
        session.execute(update(OutboxEvent).where(OutboxEvent.id == poison.id).values(done_at=utcnow()))


def _savepoints(sent: list[str]) -> list[str]:
    return [statement for statement in sent if statement.lstrip().upper().startswith("SAVEPOINT")]


def test_a_batch_takes_savepoints_only_when_a_step_fails(newsroom: dict[str, str]) -> None:
    task = _task()
    ids = _gathered(task, 0, 1, 2)
    names = [f"test-optimistic-{secrets.token_hex(3)}-{n}" for n in range(6)]
    runs: list[int] = []

    def step(session: Session, kwargs: dict[str, int], _: object) -> None:
        runs.append(kwargs["n"])
        session.add(Source(name=names[kwargs["n"]]))
        session.flush()

    with statements_sent() as sent:
        assert run_batch(task, step, limit=50) == 3
    assert _savepoints(sent) == [] and runs == [0, 1, 2]
    # A step that fails: the batch is rolled back and run again, each step in a savepoint,
    # and what the others wrote is there once.
    ids += _gathered(task, 3, 4, 5)
    runs.clear()

    def poisoned(session: Session, kwargs: dict[str, int], prepared: object) -> None:
        step(session, kwargs, prepared)
        if kwargs["n"] == 4:
            raise RuntimeError("this one is poison")

    with statements_sent() as sent:
        assert run_batch(task, poisoned, limit=50) == 2
    assert len(_savepoints(sent)) == 3 and runs == [3, 4, 3, 4, 5]
    with session_scope() as session:
        stored = session.scalars(select(Source.name).where(Source.name.in_(names)).order_by(Source.name))
        assert stored.all() == sorted(names[:4] + names[5:])
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(done_at=utcnow()))


def test_a_gathered_event_whose_run_never_finished_goes_alone(newsroom: dict[str, str]) -> None:
    task = _task()
    died, fresh = _gathered(task, 0, 1)
    with session_scope(read_only=True) as session:  # a run took the first, and its worker died
        claimed, _ = claim(session, task, limit=1)
    assert [event.id for event in claimed] == [died]
    release(claimed)  # its claim ran out
    seen: list[int] = []
    assert run_batch(task, lambda _s, kwargs, _p: seen.append(kwargs["n"]), limit=50) == 1
    assert seen == [1]
    again, ran = _outbox([died, fresh])
    assert (again.done_at, again.gather) == (None, False) and ran.done_at
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id == died).values(done_at=utcnow()))


def test_a_database_fault_fails_the_whole_batch(newsroom: dict[str, str]) -> None:
    task = _task()
    ids = _gathered(task, 0, 1)

    def step(_session: object, kwargs: dict[str, int], _: object) -> None:
        if kwargs["n"] == 1:
            raise OperationalError("UPDATE", {}, Exception("database is locked"))

    with pytest.raises(OperationalError):
        run_batch(task, step, limit=50)
    # Nothing taken, and not claimed any more: the task's retry runs them (alone, as a
    # batch that failed may fail again).
    assert all(row.done_at is None and row.gather for row in _outbox(ids))
    with session_scope(read_only=True) as session:
        events, _ = claim(session, task, limit=50)
    assert [(event.id, event.runs) for event in events] == [(ids[0], 2), (ids[1], 2)]
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(done_at=utcnow()))


# --- typed task references, entry points, one failure decision --------------------------------


def test_every_registered_task_is_declared_and_batches_have_their_own_entry_point() -> None:
    import services.ingest.tasks
    import services.publish.tasks
    import services.syndicate.tasks

    ours = {name for name in celery.app.tasks if not name.startswith("celery.")}
    assert ours == set(DECLARED) | set(BATCHES)
    assert BATCHES == {
        "ingest.process_receipts": PROCESS_RECEIPT,
        "publish.publish_stories": PUBLISH_STORY,
        "syndicate.stories_changed": STORY_CHANGED,
    }
    # A single run needs its id: no "missing argument means batch" any more.
    with pytest.raises(TypeError):
        services.ingest.tasks.process_receipt.run()


def test_an_undeclared_task_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not declared"):
        newsroom_task(TaskRef("ingest.proces_receipt"))
    with pytest.raises(ValueError, match="no batch entry point"):
        batch_task(DELIVER)


@pytest.mark.parametrize(
    ("error", "tries", "verdict"),
    [
        (SkipEvent("done already"), 1, Verdict.SKIP),
        (NotFound("no such receipt"), 1, Verdict.PERMANENT),
        (TransientError("database locked"), 1, Verdict.TRANSIENT),
        (OperationalError("UPDATE", {}, Exception("locked")), MAX_RUNS - 1, Verdict.TRANSIENT),
        (TransientError("database locked"), MAX_RUNS, Verdict.GIVE_UP),
        (RuntimeError("a bug"), 1, Verdict.FAILED),
        (RuntimeError("a bug"), MAX_FAILURES, Verdict.GIVE_UP),
    ],
)
def test_one_function_decides_what_a_failure_means(error: Exception, tries: int, verdict: Verdict) -> None:
    decision = decide(error, tries=tries)
    assert decision.verdict is verdict
    if verdict in (Verdict.TRANSIENT, Verdict.FAILED):
        assert decision.delay == RETRY_DELAYS[tries - 1]


def test_runs_are_counted_once_per_start_in_redis(newsroom: dict[str, str]) -> None:
    work = f"test-{secrets.token_hex(3)}"
    assert [count_run(work) for _ in range(3)] == [1, 2, 3]
    assert not too_many_runs(MAX_RUNS) and too_many_runs(MAX_RUNS + 1)


# --- emit, relay, done marks ------------------------------------------------------------------


def test_emit_takes_a_typed_task_and_its_arguments(newsroom: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="no batch entry point"), session_scope() as session:
        emit(session, DELIVER, {"delivery_id": "msg_x"}, batch=True)
    ref = TaskRef(f"test.emitted-{secrets.token_hex(3)}")
    with published() as sent, session_scope() as session:
        event = emit(session, ref, {"n": 1})
        assert emitted(session) == [event]
        assert sent == []  # not before the commit
    assert sent == [f"outbox-{event.id}-0"]
    with session_scope(read_only=True) as session:
        row = session.get_one(OutboxEvent, event.id)
    # Relayed after the commit: the broker took it, so it stays marked sent, not yet done.
    assert (row.task, row.kwargs, row.gather, row.done_at) == (ref.name, {"n": 1}, False, None)
    assert row.sent_at is not None
    _done([event.id])


def test_an_event_rolled_back_with_its_transaction_is_never_sent(newsroom: dict[str, str]) -> None:
    ref = TaskRef(f"test.emitted-{secrets.token_hex(3)}")

    def change_that_fails() -> None:
        with session_scope() as session:
            emit(session, ref, {"n": 1})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change_that_fails()
    with session_scope(read_only=True) as session:
        assert session.scalar(select(OutboxEvent.id).where(OutboxEvent.task == ref.name)) is None


def test_finish_marks_the_running_event_in_the_callers_transaction_only(newsroom: dict[str, str]) -> None:
    (first,) = _gathered(_task(), 0)
    token = running_event.set(first)
    try:

        def transaction_that_fails() -> None:
            with session_scope() as session:
                finish(session)
                raise RuntimeError("the task's transaction failed")

        with pytest.raises(RuntimeError):
            transaction_that_fails()
        assert _outbox([first])[0].done_at is None  # rolled back with it
        running_event.set(first)
        with session_scope() as session:  # another transaction, not finishing: no mark
            session.add(Source(name=f"test-finish-{secrets.token_hex(3)}"))
        assert _outbox([first])[0].done_at is None
        with session_scope() as session:
            finish(session)
        assert _outbox([first])[0].done_at is not None
        assert running_event.get() is None
    finally:
        running_event.reset(token)


def _done(ids: list[int]) -> None:
    # Not left for a sweep to send again.
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(done_at=utcnow()))


def test_events_emitted_in_a_batch_step_are_relayed_after_its_commit(newsroom: dict[str, str]) -> None:
    task = _task()
    ids = _gathered(task, 0)
    follow_up = TaskRef(f"test.follow-up-{secrets.token_hex(3)}")
    emitted_ids: list[int] = []

    def step(session: Session, kwargs: dict[str, int], _: object) -> None:
        emitted_ids.append(emit(session, follow_up, {"n": kwargs["n"]}).id)

    with published() as sent:
        assert run_batch(task, step, limit=50) == 1
    (row,) = _outbox(emitted_ids)
    assert f"outbox-{row.id}-0" in sent  # relayed after the batch's commit
    assert row.sent_at is not None and row.done_at is None and _outbox(ids)[0].done_at is not None
    _done(emitted_ids)


@contextmanager
def published() -> Iterator[list[str]]:
    """The ids of the messages this process puts on the broker meanwhile."""
    sent: list[str] = []

    def note(headers: dict[str, Any], **_: Any) -> None:
        sent.append(headers["id"])

    after_task_publish.connect(note, weak=False)
    try:
        yield sent
    finally:
        after_task_publish.disconnect(note)


def test_with_batches_off_every_event_goes_on_its_own(newsroom: dict[str, str]) -> None:
    gathered: list[bool] = []

    def emit_and_roll_back() -> None:
        with session_scope() as session:
            gathered.append(emit(session, PROCESS_RECEIPT, {"receipt_id": 0}, batch=True).gather)
            raise RuntimeError("rolled back: never relayed")

    with newsroom_environment({**newsroom, "NEWSROOM_OUTBOX_BATCH": "off"}), pytest.raises(RuntimeError):
        emit_and_roll_back()
    assert gathered == [False]


def test_a_failure_for_good_is_recorded_once_per_event(newsroom: dict[str, str]) -> None:
    """Two runs of one event (the sweep sent it again while the first was retried) record it once."""
    (event_id,) = _gathered(_task(), 0)
    key = f"n={event_id}"
    _failed("test.poison", {"n": event_id}, "gave up after 5 runs", event_id)
    _failed("test.poison", {"n": event_id}, "gave up after 6 runs", event_id)
    with session_scope(read_only=True) as session:
        assert session.scalars(select(Failure.error).where(Failure.key == key)).all() == [
            "gave up after 5 runs"
        ]
    assert _outbox([event_id])[0].done_at is not None


def test_a_step_runs_in_the_transaction_that_emits_it_or_its_event_is_written(
    newsroom: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = secrets.token_hex(3)
    here, fails, skips = (TaskRef(f"test.{what}-{tag}", in_place=True) for what in ("here", "fails", "skips"))
    flags = TaskRef(f"test.flags-{tag}", batch=f"test.flags-{tag}-batch", in_place=True)
    for ref in (here, fails, skips, flags):
        monkeypatch.setitem(DECLARED, ref.name, ref)
    monkeypatch.setattr(tasks, "_steps", {})
    monkeypatch.setattr(tasks, "_steps_at_commit", {})
    flagged: list[list[int]] = []

    def source(session: Session, name: str) -> None:
        session.add(Source(name=f"{name}-{tag}"))
        session.flush()

    @tasks.in_transaction(here)
    def run_here(session: Session, kwargs: dict[str, Any]) -> None:
        source(session, f"here-{kwargs['n']}")
        emit(session, flags, {"n": kwargs["n"]}, batch=True)

    @tasks.in_transaction(fails)
    def run_and_fail(session: Session, kwargs: dict[str, Any]) -> None:
        run_here(session, kwargs)
        raise RuntimeError("the step failed")

    @tasks.in_transaction(skips)
    def run_and_skip(session: Session, kwargs: dict[str, Any]) -> None:
        run_here(session, kwargs)
        raise SkipEvent("nothing to do")

    @tasks.at_commit(flags)
    def flag(session: Session, changes: list[dict[str, Any]]) -> None:
        flagged.append([change["n"] for change in changes])
        source(session, "flagged")

    with pytest.raises(ValueError, match="not declared in_place"):
        tasks.in_transaction(DELIVER)(run_here)
    token = run_in_transaction.set(tasks._run_in_transaction)
    try:
        with published() as sent, session_scope() as session:
            assert emit(session, here, {"n": 1}) is None
            written = emit(session, fails, {"n": 2})
            assert emit(session, skips, {"n": 3}) is None
            assert emit(session, here, {"n": 4}) is None
            assert flagged == []  # not before the commit
    finally:
        run_in_transaction.reset(token)
    # The steps that ran committed with the transaction, and their feed flags ran once, together,
    # just before it; the failed and the skipped steps left nothing, not even their flags.
    assert flagged == [[1, 4]]
    with session_scope(read_only=True) as session:
        names = set(session.scalars(select(Source.name).where(Source.name.like(f"%-{tag}"))))
        rows = session.execute(
            select(OutboxEvent.task, OutboxEvent.kwargs).where(OutboxEvent.task.like(f"%-{tag}"))
        )
        outbox = [tuple(row) for row in rows]
    assert names == {f"here-1-{tag}", f"here-4-{tag}", f"flagged-{tag}"}
    # The failed step's event was written as usual, to meet its failure again as a task.
    assert written is not None
    assert outbox == [(fails.name, {"n": 2})]
    assert sent == [f"outbox-{written.id}-0"]
    _done([written.id])


def test_a_failing_step_at_commit_rolls_the_whole_transaction_back(
    newsroom: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = secrets.token_hex(3)
    flags = TaskRef(f"test.flags-{tag}", batch=f"test.flags-{tag}-batch", in_place=True)
    monkeypatch.setitem(DECLARED, flags.name, flags)
    monkeypatch.setattr(tasks, "_steps_at_commit", {})

    @tasks.at_commit(flags)
    def flag(session: Session, changes: list[dict[str, Any]]) -> None:
        raise OperationalError("UPDATE feeds", {}, Exception("the database went away"))

    def change() -> None:
        with session_scope() as session:
            session.add(Source(name=f"change-{tag}"))
            assert emit(session, flags, {"n": 1}) is None

    token = run_in_transaction.set(tasks._run_in_transaction)
    try:
        with pytest.raises(OperationalError):
            change()
    finally:
        run_in_transaction.reset(token)
    with session_scope(read_only=True) as session:
        assert session.scalar(select(Source.id).where(Source.name == f"change-{tag}")) is None
