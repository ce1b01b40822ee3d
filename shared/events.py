"""The transactional outbox: a change and the tasks announcing it commit together.

``emit`` adds an outbox row in the caller's transaction; right after commit the
rows are relayed to Celery and marked sent. If the process or Redis dies in
between, the scheduler's sweep re-sends whatever is still pending, so work is
delivered at least once and every task is idempotent.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Collection, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db import after_commit, before_commit_hooks, session_scope
from shared.models import Delivery, OutboxEvent, Partner, Story, utcnow
from shared.ninjs import story_to_ninjs
from shared.text import slugify

log = logging.getLogger(__name__)

# A send the broker refused is tried again by the sweep after this.
RETRY_UNSENT = timedelta(seconds=1)
# Deliveries are sent by their outbox task; the delivery sweep steps in after this.
DELIVERY_GRACE = timedelta(seconds=10)

STORY_EVENTS = ("story.published", "story.updated", "story.killed")


def emit(
    session: Session, task: str, *, gather: bool = False, here: bool = False, **kwargs: Any
) -> OutboxEvent:
    """Write a task to the outbox in the current transaction; it is sent after commit.

    The row is written as sent (``sent_at``) because the post-commit relay sends it
    at once; a relay that fails un-marks it, and one that never ran (the process
    died) leaves it not done, which the sweep notices after the lease.

    A ``gather`` event is not sent on its own: one message, sent unless one is already
    on its way, makes a worker take the pending events of the task in a batch
    (``shared.celery.run_gathered``).
    Under load one task run then does the work of many events.

    A ``here`` event, emitted by a task in a worker, is run by that worker right after the
    commit (``shared.celery.run_here``), saving the trip through the broker; if that run
    fails, or the process dies first, it goes to the broker like any other.
    """
    settings = get_settings()
    gather = gather and settings.outbox_batch
    here = here and settings.outbox_run_here
    now = utcnow()
    event = OutboxEvent(task=task, kwargs=kwargs, next_try_at=now, sent_at=now, gather=gather)
    session.add(event)
    session.flush()
    pending: list[tuple[OutboxEvent, bool]] = session.info.setdefault("outbox_events", [])
    if not session.info.get("outbox_relay"):
        # Registered once per transaction (a savepoint rolled back takes its events off the list).
        session.info["outbox_relay"] = True

        def send() -> None:
            relay([(e.id, e.task, e.kwargs, e.attempts, e.gather) for e, _ in pending],
                  here={e.id for e, here in pending if here})  # fmt: skip

        after_commit(session, send)
    pending.append((event, here))
    return event


Outgoing = tuple[int, str, dict[str, Any], int, bool]

# Set while a message to gather a task's events is on its way (a key per task).
GATHER_PENDING = "newsroom:outbox:gather"
# A gathering message that was lost stops holding back new ones after this.
GATHER_PENDING_MS = 2000


def relay(events: list[Outgoing], *, here: Collection[int] = ()) -> int:
    """Send outbox events to the broker; the ones it did not take are left for the sweep.

    Events in ``here`` are run in this worker process first, if it is one (a gathered task
    once, taking all its pending events).
    """
    from shared.celery import run_here, send_task

    failed: list[int] = []
    gathered: set[str] = set()
    for event_id, task, kwargs, attempts, gather in events:
        if gather and task in gathered:
            continue
        if event_id in here and run_here(None if gather else event_id, task, {} if gather else kwargs):
            if gather:
                gathered.add(task)
            continue
        if failed:  # the broker is down: do not wait on it once per event
            failed.append(event_id)
            continue
        try:
            if not gather:
                send_task(task, kwargs, task_id=f"outbox-{event_id}-{attempts}")
            else:
                send_gathering(task)
                gathered.add(task)
        except Exception as error:
            log.warning("outbox %s: broker unavailable: %s", event_id, error)
            failed.append(event_id)
    if failed:
        with session_scope() as session:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(failed))
                .values(sent_at=None, next_try_at=utcnow() + RETRY_UNSENT)
            )
    return len(events) - len(failed)


def send_gathering(task: str) -> None:
    """Send the message that gathers ``task``'s events, unless one is on its way."""
    from shared.celery import send_task
    from shared.redis import get_redis

    if get_redis().set(f"{GATHER_PENDING}:{task}", 1, nx=True, px=GATHER_PENDING_MS):
        send_task(task, {}, task_id=f"gather-{task}-{secrets.token_hex(6)}")


# --- gathered events, taken in batches --------------------------------------------------------

# A run's claim on a gathered event (this prefix and the event id): other runs leave it alone.
GATHER_CLAIM = "newsroom:outbox:claim"
# How many runs an outbox event's task has started (this prefix and the event id).
RUNS = "newsroom:runs"
# Claims every event it can and counts a run of each; returns the counts (0: claimed elsewhere).
_CLAIM = """
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('SET', KEYS[1] .. ':' .. id, 1, 'NX', 'PX', ARGV[1]) then
    local runs = redis.call('INCR', KEYS[2] .. ':' .. id)
    redis.call('EXPIRE', KEYS[2] .. ':' .. id, 86400)
    out[#out + 1] = runs
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Gathered:
    """A pending event of a gathered task, claimed by this run."""

    id: int
    task: str
    kwargs: dict[str, Any]
    attempts: int
    # Runs started with this event, this one included: more than one means a run that
    # had it never finished (its worker died), so it is run alone from now on.
    runs: int


def claim_gathered(
    session: Session, task: str, *, limit: int, clear_mark: bool = True
) -> tuple[list[Gathered], bool]:
    """Claim the pending events of a gathered task for this run; and whether more are waiting.

    A run started by a message clears the "on its way" mark first, so an event that
    commits after this read sends a message of its own. Events another run has claimed
    are left to it. The claims are only a courtesy between runs: ``take`` decides in the
    database who runs an event.
    """
    from shared.redis import get_redis

    redis = get_redis()
    try:
        if clear_mark:
            redis.delete(f"{GATHER_PENDING}:{task}")
    except Exception as error:  # the mark expires on its own
        log.warning("outbox: could not clear the gathering mark of %s: %s", task, error)
    rows = session.execute(
        select(OutboxEvent.id, OutboxEvent.kwargs, OutboxEvent.attempts)
        .where(OutboxEvent.done_at.is_(None), OutboxEvent.task == task, OutboxEvent.gather.is_(True))
        .order_by(OutboxEvent.id)
        .limit(limit)
    ).all()
    if not rows:
        return [], False
    lease_ms = int(get_settings().outbox_lease * 1000)
    runs = redis.eval(_CLAIM, 2, GATHER_CLAIM, RUNS, lease_ms, *(row.id for row in rows))
    claimed = [Gathered(row.id, task, row.kwargs, row.attempts, int(count))
               for row, count in zip(rows, runs, strict=True) if int(count)]  # fmt: skip
    return claimed, len(rows) == limit


def take(session: Session, events: Sequence[Gathered]) -> set[int]:
    """Mark events done in the caller's transaction; returns the ids that were still pending."""
    if not events:
        return set()
    return set(session.scalars(
        update(OutboxEvent)
        .where(OutboxEvent.id.in_([event.id for event in events]), OutboxEvent.done_at.is_(None))
        .values(done_at=utcnow())
        .returning(OutboxEvent.id)
        .execution_options(synchronize_session=False)
    ))  # fmt: skip


def ungather(session: Session, events: Sequence[Gathered]) -> None:
    """Send taken events on their own after commit: a message each, with the task's retries and cap."""
    if not events:
        return
    now = utcnow()
    session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.id.in_([event.id for event in events]))
        .values(gather=False, done_at=None, sent_at=now, next_try_at=now)
        .execution_options(synchronize_session=False)
    )
    outgoing = [(event.id, event.task, event.kwargs, event.attempts, False) for event in events]
    after_commit(session, lambda: relay(outgoing))  # type: ignore[arg-type]


def release_claims(events: Sequence[Gathered]) -> None:
    """Let other runs take these events again (the run that claimed them failed)."""
    from shared.redis import get_redis

    if not events:
        return
    try:
        get_redis().delete(*(f"{GATHER_CLAIM}:{event.id}" for event in events))
    except Exception as error:  # the claims expire on their own
        log.warning("outbox: claims not released: %s", error)


def sweep(limit: int = 500) -> int:
    """Send what the relay could not, and again what a worker never finished.

    Run by the scheduler. An event the broker refused, or one sent but not done
    within the lease (Redis restarted empty, a worker or the API killed at the
    wrong moment), is claimed and sent again; every task is idempotent.
    """
    now = utcnow()
    lost_before = now - timedelta(seconds=get_settings().outbox_lease)
    columns = (OutboxEvent.id, OutboxEvent.task, OutboxEvent.kwargs, OutboxEvent.attempts, OutboxEvent.gather)
    # Look before taking a writer's lock: on SQLite a write transaction every tick
    # would queue behind (and hold up) the workers for nothing.
    unsent_rows = (OutboxEvent.sent_at.is_(None), OutboxEvent.next_try_at <= now)
    lost_rows = (OutboxEvent.done_at.is_(None), OutboxEvent.sent_at < lost_before)
    with session_scope(read_only=True) as session:
        anything = session.scalar(select(OutboxEvent.id).where(*unsent_rows).limit(1)) or session.scalar(
            select(OutboxEvent.id).where(*lost_rows).limit(1)
        )
    if anything is None:
        return 0
    with session_scope() as session:
        unsent = select(*columns).where(*unsent_rows).order_by(OutboxEvent.id).limit(limit)
        lost = select(*columns).where(*lost_rows).order_by(OutboxEvent.id).limit(limit)
        if session.get_bind().dialect.name == "postgresql":
            unsent = unsent.with_for_update(skip_locked=True)
            lost = lost.with_for_update(skip_locked=True)
        rows = [*session.execute(unsent), *session.execute(lost)]
        if rows:
            # Claimed as sent now: another scheduler's sweep leaves them alone for a lease.
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_([row.id for row in rows]))
                .values(sent_at=now, attempts=OutboxEvent.attempts + 1)
            )
    if not rows:
        return 0
    log.info("outbox sweep: sending %d events again", len(rows))
    return relay([(row.id, row.task, row.kwargs, row.attempts + 1, row.gather) for row in rows])


# The outbox event whose task this worker is running, until its done mark is written.
running_event: ContextVar[int | None] = ContextVar("running_event", default=None)


def _mark_running_done(session: Session) -> None:
    # The task's first write transaction carries its done mark, so a finished task
    # costs no extra commit. Any later step of a task has its own recovery in the
    # database (dirty feeds, a delivery's next_attempt_at), so nothing is lost if
    # the worker dies after this commit.
    event_id = running_event.get()
    if event_id is not None:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == event_id, OutboxEvent.done_at.is_(None))
            .values(done_at=utcnow())
        )
        running_event.set(None)


before_commit_hooks.append(_mark_running_done)


def mark_done(event_id: int) -> None:
    """Record that a worker finished an outbox event's task."""
    with session_scope() as session:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == event_id, OutboxEvent.done_at.is_(None))
            .values(done_at=utcnow())
        )


def event_id_of(task_id: str | None) -> int | None:
    """The outbox event a Celery task id was sent for (``outbox-<id>-<attempt>``), if any."""
    if not task_id or not task_id.startswith("outbox-"):
        return None
    parts = task_id.split("-")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def partner_matches(partner: Partner, story: Story, previous: dict[str, Any] | None = None) -> bool:
    """Whether a story passes a partner's filters (any section, tag or label; none = all).

    ``previous`` is the story's membership before the change (``shared.stories.membership``):
    a partner that had the story hears of it leaving its filters too.
    """
    if not (partner.sections or partner.tags or partner.labels):
        return True
    sections = {slugify(s) for s in partner.sections}
    tags = {slugify(t) for t in partner.tags}
    labels = {label.lower() for label in partner.labels}
    memberships = [(story.section, [tag.slug for tag in story.tags], story.label_names)]
    if previous:
        before = (previous.get("section"), previous.get("tags") or [], previous.get("labels") or [])
        memberships.append(before)
    return any(
        (section is not None and slugify(section) in sections)
        or any(slug in tags for slug in story_tags)
        or any(label in labels for label in story_labels)
        for section, story_tags, story_labels in memberships
    )


def new_delivery_id() -> str:
    """A webhook-id: unique, and the same on every retry and replay of the delivery."""
    return f"msg_{secrets.token_hex(12)}"


def announce_story(
    session: Session, story: Story, event: str, *, previous: dict[str, Any] | None = None
) -> list[Delivery]:
    """Announce a published, updated or killed story: feeds to refresh and partner deliveries.

    The delivery rows are written in the caller's transaction, so a story change
    can never commit without them.
    """
    if event not in STORY_EVENTS:
        raise ValueError(f"unknown story event {event!r}")
    settings = get_settings()
    now = utcnow()
    pubstatus = "canceled" if event == "story.killed" else "usable"
    body: str | None = None  # the payload, built for the first partner that gets it
    deliveries = []
    # A take-down goes to the partners that were told of the story, and only to them.
    told = (
        set(session.scalars(select(Delivery.partner_id).where(Delivery.story_id == story.id).distinct()))
        if event == "story.killed"
        else None
    )
    for partner in session.scalars(select(Partner).where(Partner.enabled.is_(True))):
        if told is not None and partner.id not in told:
            continue
        if told is None and not partner_matches(partner, story, previous):
            continue
        if body is None:
            body = json.dumps(
                {
                    "type": event,
                    "timestamp": now.isoformat().replace("+00:00", "Z"),
                    "data": story_to_ninjs(story, settings=settings, pubstatus=pubstatus),
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
        delivery = Delivery(
            id=new_delivery_id(),
            partner_id=partner.id,
            story_id=story.id,
            story_revision=story.revision,
            event=event,
            payload=body,
            # Its task is queued after commit; the sweep steps in only if that is lost.
            next_attempt_at=now + DELIVERY_GRACE,
        )
        session.add(delivery)
        deliveries.append(delivery)
    session.flush()
    emit(
        session,
        "syndicate.story_changed",
        gather=True,
        here=True,
        story_id=story.id,
        revision=story.revision,
        event=event,
        previous=previous or {},
    )
    for delivery in deliveries:
        emit(session, "syndicate.deliver", delivery_id=delivery.id)
    log.info("story %s r%s %s: %d deliveries", story.id, story.revision, event, len(deliveries))
    return deliveries
