"""Partner deliveries against real loopback servers, one attempt at a time, on a clock the test sets.

Each attempt is made in this process with ``partners.deliver(id, now=...)``; the clock starts a
month ahead, so the pipeline's own scheduler (on the real clock) never finds these deliveries
due. Deliveries that a test hands back to the worker (replays, released versions) go on the
real clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime

import pytest

from services.cli import main
from services.syndicate import partners
from services.syndicate.partners import RETRY_LADDER, acquire_slot, release_slot
from shared.config import reset_settings
from shared.db import session_scope
from shared.models import Partner, utcnow
from tests.helpers.newsdesk import (
    Answer,
    Hook,
    PartnerRef,
    StoryRef,
    closed_port_url,
    delivery,
    insert_story,
    new_delivery,
    new_partner,
    new_source,
    signature_ok,
)
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline

JITTER = 1.1
T0 = (utcnow() + timedelta(days=30)).replace(microsecond=0)
LATER = T0 + timedelta(days=1)


@pytest.fixture
def story(newsroom: dict[str, str]) -> StoryRef:
    return insert_story(new_source())


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Change NEWSROOM_* settings for this process during one test."""
    yield monkeypatch
    monkeypatch.undo()
    reset_settings()


def set_setting(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    reset_settings()


def assert_waited(delivery_id: str, *, after: int, since: object) -> None:
    """The delivery's next attempt is the ladder's step after ``after`` attempts, plus jitter."""
    row = delivery(delivery_id)
    base = RETRY_LADDER[after - 1]
    assert row.next_attempt_at is not None
    wait = row.next_attempt_at - since  # type: ignore[operator]
    assert base <= wait <= base * JITTER, (after, wait)


# --- signing -----------------------------------------------------------------------------------


def test_a_push_is_signed_per_standard_webhooks(
    newsroom: dict[str, str], story: StoryRef, hook: Hook
) -> None:
    partner = new_partner(hook.url)
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)

    assert partners.deliver(delivery_id, now=T0) == "sent"

    [push] = hook.pushes
    assert push.headers["webhook-id"] == delivery_id
    assert push.headers["webhook-timestamp"] == str(int(T0.timestamp()))
    assert push.headers["content-type"] == "application/json"
    assert push.headers["webhook-signature"].startswith("v1,")
    assert signature_ok(partner.secret, push)
    assert not signature_ok(partner.secret.replace("whsec_", "whsec_AAAA"), push)
    assert push.body == delivery(delivery_id).payload
    assert push.payload["data"]["headlines"][0]["value"] == "Київ & <Львів>: «ціни» 🎉 a < b"
    row = delivery(delivery_id)
    assert (row.status, row.attempts, row.last_status, row.sent_at) == ("sent", 1, 204, T0)
    # Sent is final: asking again sends nothing.
    assert partners.deliver(delivery_id, now=LATER) == "sent"
    assert len(hook.pushes) == 1


# --- faults --------------------------------------------------------------------------------------


def test_refused_connections_climb_the_whole_ladder_then_die(
    newsroom: dict[str, str], story: StoryRef
) -> None:
    partner = new_partner(closed_port_url())
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
    now = T0
    for attempt in range(1, len(RETRY_LADDER) + 2):
        status = partners.deliver(delivery_id, now=now)
        row = delivery(delivery_id)
        assert row.attempts == attempt
        assert row.last_status is None
        assert row.last_error is not None and row.last_error.startswith("connection failed")
        if attempt <= len(RETRY_LADDER):
            assert status == "pending"
            assert_waited(delivery_id, after=attempt, since=now)
            assert row.next_attempt_at is not None
            # Never early: a second before its time the attempt is not made.
            assert partners.deliver(delivery_id, now=row.next_attempt_at - timedelta(seconds=1)) == "not due"
            assert delivery(delivery_id).attempts == attempt
            now = row.next_attempt_at
    assert status == "dead"
    assert row.attempts == 10
    assert row.next_attempt_at is None
    assert "gave up after 10 attempts" in (row.last_error or "")


def test_server_errors_retry_at_once_then_on_the_ladder(newsroom: dict[str, str], story: StoryRef) -> None:
    hook = Hook(Answer(500))
    try:
        partner = new_partner(hook.url)
        delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
        now = T0
        stamps = []
        for attempt in range(1, 11):
            before = len(hook.pushes)
            partners.deliver(delivery_id, now=now)
            # The first attempt tries twice ("at once"); each later attempt once.
            assert len(hook.pushes) - before == (2 if attempt == 1 else 1)
            stamps.append(int(now.timestamp()))
            row = delivery(delivery_id)
            error = "HTTP 500" if attempt < 10 else "HTTP 500; gave up after 10 attempts"
            assert (row.attempts, row.last_status, row.last_error) == (attempt, 500, error)
            if attempt < 10:
                assert_waited(delivery_id, after=attempt, since=now)
                assert row.next_attempt_at is not None
                now = row.next_attempt_at
        assert delivery(delivery_id).status == "dead"
        assert len(hook.pushes) == 11
        # Every try carries the same webhook-id, its own timestamp and a valid signature.
        assert {push.headers["webhook-id"] for push in hook.pushes} == {delivery_id}
        assert [int(push.headers["webhook-timestamp"]) for push in hook.pushes] == [stamps[0], *stamps]
        assert all(signature_ok(partner.secret, push) for push in hook.pushes)
    finally:
        hook.close()


def test_a_hanging_partner_times_out_and_waits_its_turn(
    newsroom: dict[str, str], story: StoryRef, settings_env: pytest.MonkeyPatch
) -> None:
    set_setting(settings_env, "NEWSROOM_PARTNER_TIMEOUT", "0.2")
    gate = threading.Event()
    hook = Hook(Answer(204, gate=gate))
    try:
        partner = new_partner(hook.url)
        delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
        assert partners.deliver(delivery_id, now=T0) == "pending"
        row = delivery(delivery_id)
        assert len(hook.pushes) == 2  # tried at once again after the first timeout
        assert (row.attempts, row.last_status, row.last_error) == (1, None, "timed out after 0.2s")
        assert_waited(delivery_id, after=1, since=T0)
        assert row.next_attempt_at is not None
        gate.set()
        assert partners.deliver(delivery_id, now=row.next_attempt_at) == "sent"
        assert delivery(delivery_id).attempts == 2
    finally:
        gate.set()
        hook.close()


def test_429_honours_retry_after_in_seconds_and_as_a_date(
    newsroom: dict[str, str], story: StoryRef, hook: Hook
) -> None:
    partner = new_partner(hook.url)
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
    retry_at = T0 + timedelta(seconds=120) + timedelta(hours=1)
    hook.answers.extend(
        [
            Answer(429, {"Retry-After": "120"}),
            Answer(429, {"Retry-After": format_datetime(retry_at, usegmt=True)}),
            Answer(429, {"Retry-After": "1"}),
            Answer(204),
        ]
    )

    assert partners.deliver(delivery_id, now=T0) == "pending"
    # Retry-After asks for a wait: no "at once" retry, and the wait is longer than the ladder's.
    assert len(hook.pushes) == 1
    assert delivery(delivery_id).next_attempt_at == T0 + timedelta(seconds=120)

    second = T0 + timedelta(seconds=120)
    assert partners.deliver(delivery_id, now=second) == "pending"
    assert delivery(delivery_id).next_attempt_at == retry_at

    # A Retry-After shorter than the ladder's step does not shorten it (30 min after attempt 3).
    assert partners.deliver(delivery_id, now=retry_at) == "pending"
    assert_waited(delivery_id, after=3, since=retry_at)
    row = delivery(delivery_id)
    assert (row.attempts, row.last_status) == (3, 429)

    assert row.next_attempt_at is not None
    assert partners.deliver(delivery_id, now=row.next_attempt_at) == "sent"
    assert len(hook.pushes) == 4
    assert delivery(delivery_id).sent_at == row.next_attempt_at


@pytest.mark.parametrize("status", [408, 502, 503])
def test_other_retryable_answers_wait_on_the_ladder(
    newsroom: dict[str, str], story: StoryRef, hook: Hook, status: int
) -> None:
    hook.default = Answer(status)
    partner = new_partner(hook.url)
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
    assert partners.deliver(delivery_id, now=T0) == "pending"
    assert len(hook.pushes) == 2
    assert delivery(delivery_id).last_status == status
    assert_waited(delivery_id, after=1, since=T0)


def test_a_redirect_is_not_followed_and_the_delivery_is_dead(
    newsroom: dict[str, str], story: StoryRef, hook: Hook
) -> None:
    elsewhere = Hook()
    try:
        hook.default = Answer(301, {"Location": elsewhere.url})
        partner = new_partner(hook.url)
        delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
        assert partners.deliver(delivery_id, now=T0) == "dead"
        row = delivery(delivery_id)
        assert (row.attempts, row.last_status, row.next_attempt_at) == (1, 301, None)
        assert f"redirected to {elsewhere.url}" in (row.last_error or "")
        assert len(hook.pushes) == 1
        assert elsewhere.pushes == []
        assert partners.deliver(delivery_id, now=LATER) == "dead"
        assert len(hook.pushes) == 1
    finally:
        elsewhere.close()


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_client_error_is_dead_at_once(
    newsroom: dict[str, str], story: StoryRef, hook: Hook, status: int
) -> None:
    hook.default = Answer(status)
    partner = new_partner(hook.url)
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
    assert partners.deliver(delivery_id, now=T0) == "dead"
    row = delivery(delivery_id)
    assert (row.attempts, row.last_status, row.last_error) == (1, status, f"HTTP {status}")
    assert len(hook.pushes) == 1
    with session_scope(read_only=True) as session:
        assert session.get_one(Partner, partner.id).enabled


def test_410_disables_the_partner_and_ends_its_pending_deliveries(
    pipeline: Pipeline, story: StoryRef, hook: Hook, capsys: pytest.CaptureFixture[str]
) -> None:
    hook.default = Answer(410)
    partner = new_partner(hook.url)
    gone = new_delivery(partner, story.id, next_attempt_at=LATER)
    other_story = insert_story(new_source())
    waiting = new_delivery(partner, other_story.id, next_attempt_at=LATER)

    assert partners.deliver(gone, now=T0) == "dead"
    assert len(hook.pushes) == 1
    with session_scope(read_only=True) as session:
        row = session.get_one(Partner, partner.id)
        assert not row.enabled
        assert row.disabled_reason == f"answered 410 Gone to delivery {gone}"
    assert delivery(waiting).status == "dead"
    assert (delivery(waiting).last_error or "").startswith("partner disabled")
    assert partners.deliver(waiting, now=LATER) == "dead"
    assert len(hook.pushes) == 1

    # The admin replays the partner's dead deliveries: it is enabled again, ids unchanged.
    hook.default = Answer(204)
    main(["deliveries", "replay", "--partner", partner.name, "--status", "dead"])
    assert "queued 2 deliveries again" in capsys.readouterr().out
    wait_for(lambda: len(hook.pushes) == 3, what="both deliveries replayed by the worker")
    assert sorted(push.headers["webhook-id"] for push in hook.pushes[1:]) == sorted([gone, waiting])
    wait_for(lambda: delivery(gone).status == delivery(waiting).status == "sent", what="both sent")
    with session_scope(read_only=True) as session:
        assert session.get_one(Partner, partner.id).enabled


# --- ordering -----------------------------------------------------------------------------------


def test_a_newer_version_waits_for_an_older_one_on_the_ladder_then_follows_it(
    pipeline: Pipeline, story: StoryRef, hook: Hook
) -> None:
    partner = new_partner(hook.url)
    v1 = new_delivery(partner, story.id, version=1, next_attempt_at=LATER)
    hook.answers.extend([Answer(503), Answer(503)])
    assert partners.deliver(v1, now=T0) == "pending"

    v2 = new_delivery(partner, story.id, version=2, event="story.updated", next_attempt_at=LATER)
    assert partners.deliver(v2, now=T0) == "waiting"
    assert delivery(v2).attempts == 0
    with session_scope(read_only=True) as session:
        # The sweep leaves it alone too, however overdue.
        assert v2 not in partners.due_deliveries(session, now=LATER + timedelta(days=1))

    retry_at = delivery(v1).next_attempt_at
    assert retry_at is not None
    assert partners.deliver(v1, now=retry_at) == "sent"
    # Version 1 out, version 2 is released to the worker, on the real clock.
    wait_for(lambda: delivery(v2).status == "sent", what="version 2 sent by the worker")
    assert [push.headers["webhook-id"] for push in hook.pushes] == [v1, v1, v1, v2]


def test_a_newer_version_goes_once_the_older_one_is_dead(
    pipeline: Pipeline, story: StoryRef, hook: Hook
) -> None:
    partner = new_partner(hook.url)
    v1 = new_delivery(partner, story.id, version=1, next_attempt_at=LATER)
    v2 = new_delivery(partner, story.id, version=2, event="story.killed", next_attempt_at=LATER)
    hook.answers.append(Answer(422))
    assert partners.deliver(v1, now=T0) == "dead"
    # Version 1 dead, version 2 is released to the worker, on the real clock (a claim here at
    # T0, a month ahead, would find the worker's lease run out and send it a second time).
    wait_for(lambda: delivery(v2).status == "sent", what="version 2 sent by the worker")
    assert [push.headers["webhook-id"] for push in hook.pushes] == [v1, v2]


def test_an_older_version_replayed_after_a_newer_one_is_never_sent(
    pipeline: Pipeline, story: StoryRef, hook: Hook
) -> None:
    partner = new_partner(hook.url)
    v1 = new_delivery(partner, story.id, version=1, next_attempt_at=LATER)
    v2 = new_delivery(partner, story.id, version=2, event="story.updated", next_attempt_at=LATER)
    hook.answers.append(Answer(400))
    assert partners.deliver(v1, now=T0) == "dead"
    wait_for(lambda: delivery(v2).status == "sent", what="version 2 sent by the worker")

    with session_scope() as session:
        assert partners.replay(session, delivery_id=v1) == [v1]
    # Whether the worker's task or this call gets to it first, version 1 stays unsent.
    assert partners.deliver(v1, now=utcnow()) == "superseded"
    assert delivery(v1).status == "superseded"
    assert [push.headers["webhook-id"] for push in hook.pushes] == [v1, v2]


def test_a_newer_version_waits_while_an_older_one_is_in_flight(
    pipeline: Pipeline, story: StoryRef, hook: Hook
) -> None:
    partner = new_partner(hook.url)
    v1 = new_delivery(partner, story.id, version=1, next_attempt_at=LATER)
    gate = threading.Event()
    hook.answers.append(Answer(204, gate=gate))
    outcome: list[str] = []
    sender = threading.Thread(target=lambda: outcome.append(partners.deliver(v1, now=utcnow())))
    sender.start()
    try:
        wait_for(lambda: hook.pushes, what="version 1 at the partner")
        # The story changes while version 1 is on the wire.
        v2 = new_delivery(partner, story.id, version=2, event="story.updated", next_attempt_at=LATER)
        assert partners.deliver(v2, now=utcnow()) == "waiting"
        assert delivery(v2).attempts == 0
    finally:
        gate.set()
        sender.join(30)
    assert outcome == ["sent"]
    # Version 1 done, version 2 is released to the worker.
    wait_for(lambda: delivery(v2).status == "sent", what="version 2 sent by the worker")
    assert [push.headers["webhook-id"] for push in hook.pushes] == [v1, v2]


# --- bounded concurrency -------------------------------------------------------------------------


def test_a_partner_with_every_slot_busy_gets_the_delivery_back_later(
    newsroom: dict[str, str], story: StoryRef, hook: Hook, settings_env: pytest.MonkeyPatch
) -> None:
    set_setting(settings_env, "NEWSROOM_PARTNER_CONCURRENCY", "1")
    partner = new_partner(hook.url)
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
    assert acquire_slot(partner.id, "msg_elsewhere", limit=1)
    try:
        assert partners.deliver(delivery_id, now=T0) == "busy"
        row = delivery(delivery_id)
        # No attempt counted; back a second later.
        assert row.attempts == 0
        assert row.next_attempt_at is not None
        assert timedelta(seconds=1) <= row.next_attempt_at - T0 <= timedelta(seconds=1.1)
        assert hook.pushes == []
    finally:
        release_slot(partner.id, "msg_elsewhere")
    assert partners.deliver(delivery_id, now=T0 + timedelta(seconds=2)) == "sent"
    assert delivery(delivery_id).attempts == 1


# --- admin tools ------------------------------------------------------------------------------


def _dead_delivery(story: StoryRef, hook: Hook) -> tuple[PartnerRef, str]:
    hook.answers.append(Answer(400))
    partner = new_partner(hook.url)
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)
    assert partners.deliver(delivery_id, now=T0) == "dead"
    return partner, delivery_id


def test_replay_sends_again_with_the_same_webhook_id(
    pipeline: Pipeline, story: StoryRef, hook: Hook, capsys: pytest.CaptureFixture[str]
) -> None:
    partner, delivery_id = _dead_delivery(story, hook)
    main(["deliveries", "replay", delivery_id])
    assert capsys.readouterr().out.strip() == f"queued 1 deliveries again: {delivery_id}"
    wait_for(lambda: delivery(delivery_id).status == "sent", what="the replay sent by the worker")
    assert [push.headers["webhook-id"] for push in hook.pushes] == [delivery_id, delivery_id]
    assert all(signature_ok(partner.secret, push) for push in hook.pushes)
    assert delivery(delivery_id).attempts == 1


def test_deliveries_list_in_the_api_and_the_cli(
    pipeline: Pipeline, story: StoryRef, hook: Hook, capsys: pytest.CaptureFixture[str]
) -> None:
    partner, dead_id = _dead_delivery(story, hook)
    sent_id = new_delivery(partner, insert_story(new_source()).id, next_attempt_at=LATER)
    assert partners.deliver(sent_id, now=T0) == "sent"
    admin = pipeline.token("admin")

    answer = pipeline.client.get("/v1/deliveries", params={"partner": partner.name}, headers=admin)
    assert answer.status_code == 200
    listed = answer.json()["deliveries"]
    assert {(d["id"], d["status"]) for d in listed} == {(dead_id, "dead"), (sent_id, "sent")}
    dead = next(d for d in listed if d["id"] == dead_id)
    assert (dead["partner"], dead["story_id"], dead["version"], dead["attempts"]) == (
        partner.name,
        story.id,
        1,
        1,
    )
    assert (dead["last_status"], dead["last_error"], dead["event"]) == (400, "HTTP 400", "story.published")
    only_dead = pipeline.client.get(
        "/v1/deliveries", params={"partner": partner.name, "status": "dead"}, headers=admin
    ).json()["deliveries"]
    assert [d["id"] for d in only_dead] == [dead_id]

    assert pipeline.client.get("/v1/deliveries").status_code == 401
    assert pipeline.client.get("/v1/deliveries", headers=pipeline.token("editor")).status_code == 403
    assert pipeline.client.get("/v1/deliveries", params={"status": "lost"}, headers=admin).status_code == 422

    main(["deliveries", "list", "--partner", partner.name, "--status", "dead"])
    [line] = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(dead_id)
    assert "dead" in line and "attempts=1" in line and "HTTP 400" in line


def test_partner_add_prints_a_secret_and_keeps_its_filters(
    newsroom: dict[str, str], hook: Hook, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"cli-partner-{T0.timestamp():.0f}-{id(hook)}"
    main(
        [
            "partner",
            "add",
            name,
            "--url",
            hook.url,
            "--section",
            "World",
            "--tag",
            "Київ",
            "--label",
            "Breaking",
            "--label",
            "exclusive",
        ]
    )
    out = capsys.readouterr().out
    secret = out.strip().splitlines()[-1].split(": ")[-1]
    assert secret.startswith("whsec_")
    with session_scope(read_only=True) as session:
        row = session.query(Partner).filter_by(name=name).one()
        assert (row.url, row.secret, row.enabled) == (hook.url, secret, True)
        assert (row.sections, row.tags, row.labels) == (["World"], ["Київ"], ["breaking", "exclusive"])
    with pytest.raises(SystemExit) as exit_info:
        main(["partner", "add", name, "--url", hook.url])
    assert exit_info.value.code == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["partner", "add", f"{name}-bad", "--url", "ftp://example.org/"])
