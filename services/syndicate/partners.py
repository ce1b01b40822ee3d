"""Partner pushes: Standard Webhooks-signed, retried on a ladder kept in the database.

One delivery row is one push of one version of a story to one partner; its id is the
``webhook-id`` of every try, retry and replay. An attempt is claimed in SQL (attempts + 1,
``next_attempt_at`` = a lease), sent, and recorded; the row's ``next_attempt_at`` then says
when the scheduler's sweep queues the next one. tenacity retries only "at once", inside the
first attempt. A partner gets every version of a story, in order, and never version n
after version n+1: a newer version waits while an older one is pending (it is released when
the older one is sent or dead), and an older one replayed after a newer one went out is
superseded, not sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx
from sqlalchemy import ColumnElement, CursorResult, Result, and_, exists, select, update
from sqlalchemy.orm import Session, aliased
from standardwebhooks.webhooks import Webhook
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from shared import tasknames
from shared.config import get_settings
from shared.db import session_scope
from shared.egress import async_client, check_url, redact_url
from shared.errors import Conflict, NotFound, Unprocessable
from shared.logs import CONSOLE
from shared.models import Delivery, Partner, utcnow
from shared.outbox import emit
from shared.redis import get_redis

log = logging.getLogger(__name__)

# The waits before the 2nd … 10th attempt (the 1st retries once at once, inside itself);
# after the 10th attempt fails the delivery is dead.
RETRY_LADDER = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
)
RETRYABLE_STATUSES = frozenset({408, 429})
# Waits are stretched by up to this fraction, so partners that failed together do not retry together.
JITTER = 0.1
# A partner's Retry-After is honoured up to the longest step of the ladder.
MAX_RETRY_AFTER = RETRY_LADDER[-1]
# A claimed attempt that never reported back is tried again after this.
ATTEMPT_LEASE = timedelta(minutes=2)
# A delivery whose partner has all its slots busy is put back for this long (no attempt counted).
BUSY_WAIT = timedelta(seconds=1)
USER_AGENT = "Newsroom-Webhooks/1.0"
DELIVERY_STATUSES = ("pending", "sent", "dead", "superseded")


def add_partner(
    session: Session,
    *,
    name: str,
    url: str,
    format: str = "ninjs",
    sections: list[str] | None = None,
    tags: list[str] | None = None,
    labels: list[str] | None = None,
) -> Partner:
    """Create a partner with a fresh signing secret (``partner.secret``, shown once, stored sealed)."""
    if not name.strip():
        raise Unprocessable("name: a partner needs a name")
    if not url.startswith(("http://", "https://")):
        raise Unprocessable("url: a partner URL must be an absolute http(s) URL")
    check_url(url, what="url")
    if format != "ninjs":
        raise Unprocessable("format: only ninjs is supported")
    existing = session.scalars(select(Partner).where(Partner.name == name)).first()
    if existing is not None:
        raise Conflict(
            f"partner {name!r} exists" + (" (removed; its name stays taken)" if existing.removed_at else "")
        )
    partner = Partner(
        name=name,
        url=url,
        format=format,
        secret=new_secret(),
        sections=_clean(sections),
        tags=_clean(tags),
        labels=[label.lower() for label in _clean(labels)],
    )
    session.add(partner)
    session.flush()
    log.info("partner %s (id %s) added: %s", partner.name, partner.id, redact_url(partner.url))
    return partner


def new_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def find_partner(session: Session, name: str) -> Partner:
    """A partner by name that was not removed; NotFound otherwise."""
    partner = session.scalars(
        select(Partner).where(Partner.name == name, Partner.removed_at.is_(None))
    ).first()
    if partner is None:
        raise NotFound(f"partner {name!r} not found")
    return partner


def rotate_secret(session: Session, *, name: str, grace: timedelta | None = None) -> str:
    """Give a partner a new secret and return it; the old one also signs for ``grace``."""
    partner = find_partner(session, name)
    now = utcnow()
    if grace:
        partner.previous_secret_sealed = partner.secret_sealed
        partner.previous_secret_until = now + grace
    else:
        partner.previous_secret_sealed = None
        partner.previous_secret_until = None
    secret = new_secret()
    partner.secret = secret
    until = partner.previous_secret_until
    log.info(
        "partner %s: signing secret rotated; the old one signs until %s",
        partner.name,
        until.isoformat() if until else "now",
    )
    return secret


def disable_partner(session: Session, *, name: str, reason: str = "disabled by an admin") -> Partner:
    """Stop pushing to a partner; its pending deliveries are dead (and can be replayed later)."""
    partner = find_partner(session, name)
    _disable(session, partner, reason=reason)
    return partner


def enable_partner(session: Session, *, name: str) -> Partner:
    """Push to a disabled partner again (from the next change on; replay sends what it missed)."""
    partner = find_partner(session, name)
    partner.enabled = True
    partner.disabled_reason = None
    log.info("partner %s enabled", partner.name)
    return partner


def remove_partner(session: Session, *, name: str) -> Partner:
    """Disable a partner for good and hide it; its deliveries stay, as the history of what went out.

    A removed partner is never enabled again (not even by a replay), and its name stays taken,
    so a delivery's partner always names the one it went to.
    """
    partner = find_partner(session, name)
    _disable(session, partner, reason="removed")
    partner.removed_at = utcnow()
    partner.previous_secret_sealed = None
    partner.previous_secret_until = None
    return partner


def _clean(values: list[str] | None) -> list[str]:
    return list(dict.fromkeys(value.strip() for value in values or [] if value.strip()))


def sign(secret: str, delivery_id: str, timestamp: datetime, body: str) -> str:
    """One signature: ``v1,`` + base64 HMAC-SHA256 of id.timestamp.body."""
    return Webhook(secret).sign(delivery_id, timestamp, body)


def signature_header(keys: Sequence[str], delivery_id: str, timestamp: datetime, body: str) -> str:
    """The webhook-signature header: one signature per secret, space-separated (during a rotation)."""
    return " ".join(sign(secret, delivery_id, timestamp, body) for secret in keys)


# ---------------------------------------------------------------------------------------------
# Per-partner slots: at most `partner_concurrency` attempts in flight per partner, everywhere


_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


def _slots_key(partner_id: int) -> str:
    return f"newsroom:partner:{partner_id}:in-flight"


def acquire_slot(partner_id: int, delivery_id: str, *, limit: int) -> bool:
    """Take one of the partner's slots for this delivery; the slot frees itself after the lease."""
    now = time.time()
    lease = ATTEMPT_LEASE.total_seconds()
    taken = get_redis().eval(
        _ACQUIRE, 1, _slots_key(partner_id), delivery_id, limit, now, now + lease, int(lease) + 1
    )
    return bool(taken)


def release_slot(partner_id: int, delivery_id: str) -> None:
    """Give the slot back (best effort: it expires anyway)."""
    try:
        get_redis().zrem(_slots_key(partner_id), delivery_id)
    except Exception as error:
        log.warning("delivery %s: partner %s slot not released: %s", delivery_id, partner_id, error)


# ---------------------------------------------------------------------------------------------
# Claiming an attempt


@dataclass(frozen=True, slots=True)
class Attempt:
    """A claimed attempt: everything needed to send it without the database."""

    delivery_id: str
    number: int
    partner_id: int
    partner: str
    url: str
    # The current secret first; the previous one too while a rotation's grace lasts.
    secrets: tuple[str, ...]
    payload: str
    story_id: int
    version: int


def _in_flight(row: Any, now: datetime) -> ColumnElement[bool]:
    """Claimed and not yet recorded (a claim clears the last outcome), within its lease."""
    return and_(
        row.attempts >= 1,
        row.last_status.is_(None),
        row.last_error.is_(None),
        row.next_attempt_at.is_not(None),
        row.next_attempt_at > now,
    )


def _rows(result: Result[Any]) -> int:
    """How many rows an UPDATE changed."""
    return int(cast(CursorResult[Any], result).rowcount)


def _same_story(row: Any, delivery: Any) -> ColumnElement[bool]:
    return and_(row.partner_id == delivery.partner_id, row.story_id == delivery.story_id)


def claim(session: Session, delivery_id: str, *, now: datetime) -> Attempt | str:
    """Claim a delivery's next attempt in the caller's transaction, or say why not (status or reason)."""
    settings = get_settings()
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} not found")
    if delivery.status != "pending":
        return delivery.status
    partner = session.get_one(Partner, delivery.partner_id)
    if not partner.enabled:
        delivery.status = "dead"
        delivery.next_attempt_at = None
        delivery.last_error = f"partner disabled: {partner.disabled_reason or 'by an admin'}"
        _release_next(session, delivery)
        log.info("delivery %s: dead, partner %s is disabled", delivery.id, partner.name)
        return "dead"
    due = delivery.attempts == 0 or (delivery.next_attempt_at is not None and delivery.next_attempt_at <= now)
    if not due:
        return "not due"
    # A replayed old version after a newer one went out is never sent.
    if session.scalar(
        select(
            exists().where(
                _same_story(Delivery, delivery),
                Delivery.story_revision > delivery.story_revision,
                Delivery.status == "sent",
            )
        )
    ):
        return _supersede(session, delivery, now=now)
    # Each version goes out, in order: this one waits while an older one is pending.
    if session.scalar(
        select(
            exists().where(
                _same_story(Delivery, delivery),
                Delivery.story_revision < delivery.story_revision,
                Delivery.status == "pending",
            )
        )
    ):
        log.info(
            "delivery %s: waits for an older version of story %s to %s",
            delivery.id,
            delivery.story_id,
            partner.name,
        )
        return "waiting"
    if not acquire_slot(partner.id, delivery.id, limit=settings.partner_concurrency):
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.status == "pending")
            .values(next_attempt_at=now + BUSY_WAIT * (1 + random.random() * JITTER))
        )
        log.info(
            "delivery %s: partner %s has %d attempts in flight; put back",
            delivery.id,
            partner.name,
            settings.partner_concurrency,
        )
        return "busy"
    number = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery.id,
            Delivery.status == "pending",
            (Delivery.attempts == 0) | (Delivery.next_attempt_at <= now),
        )
        .values(
            attempts=Delivery.attempts + 1,
            next_attempt_at=now + ATTEMPT_LEASE,
            last_status=None,
            last_error=None,
        )
        .returning(Delivery.attempts)
        .execution_options(synchronize_session=False)
    ).scalar()
    if number is None:
        release_slot(partner.id, delivery.id)
        return _status_now(session, delivery.id)
    return Attempt(
        delivery_id=delivery.id,
        number=number,
        partner_id=partner.id,
        partner=partner.name,
        url=partner.url,
        secrets=tuple(partner.signing_secrets(now)),
        payload=delivery.payload,
        story_id=delivery.story_id,
        version=delivery.story_revision,
    )


def _status_now(session: Session, delivery_id: str) -> str:
    """After losing a race for the row: its status as the winner left it ("not due" if pending)."""
    status = session.scalar(select(Delivery.status).where(Delivery.id == delivery_id))
    return "not due" if status in (None, "pending") else str(status)


def _supersede(session: Session, delivery: Delivery, *, now: datetime) -> str:
    """A newer version of the story reached the partner: this one is never sent."""
    done = _rows(
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.status == "pending", ~_in_flight(Delivery, now))
            .values(status="superseded", next_attempt_at=None)
            .execution_options(synchronize_session=False)
        )
    )
    if not done:
        return _status_now(session, delivery.id)
    log.info("delivery %s: superseded by a newer version of story %s", delivery.id, delivery.story_id)
    _release_next(session, delivery)
    return "superseded"


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt got back (after its tries)."""

    status: int | None
    error: str | None
    retry_after: timedelta | None = None
    location: str | None = None
    tries: int = 1

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retryable(result: AttemptResult) -> bool:
    """Timeouts, connection errors, 408, 429 and 5xx are tried again."""
    status = result.status
    return status is None or status in RETRYABLE_STATUSES or status >= 500


def request_headers(attempt: Attempt, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one try."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": attempt.delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header(attempt.secrets, attempt.delivery_id, at, attempt.payload),
    }


async def post_once(
    client: httpx.AsyncClient, attempt: Attempt, *, at: datetime, limit: float
) -> AttemptResult:
    """One POST; the answer's body is not read (a partner cannot stall us with it)."""
    request = client.build_request(
        "POST",
        attempt.url,
        content=attempt.payload.encode(),
        headers=request_headers(attempt, at),
        timeout=limit,
    )
    try:
        async with asyncio.timeout(limit):
            response = await client.send(request, stream=True)
            await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        return AttemptResult(status=None, error=f"timed out after {limit:g}s")
    except httpx.ConnectError as error:
        return AttemptResult(status=None, error=f"connection failed: {error}")
    except httpx.HTTPError as error:
        return AttemptResult(status=None, error=f"request failed: {type(error).__name__}: {error}")
    status = response.status_code
    return AttemptResult(
        status=status,
        error=None if 200 <= status < 300 else f"HTTP {status}",
        retry_after=parse_retry_after(response.headers.get("retry-after"), now=at),
        location=response.headers.get("location"),
    )


async def send_attempt(
    client: httpx.AsyncClient, attempt: Attempt, *, limit: float, clock: datetime | None = None
) -> AttemptResult:
    """Send one attempt; the first attempt is tried once more at once if it may be retried.

    ``clock`` fixes the time of every try (tests); otherwise each try is stamped when sent.
    """
    count = 0

    async def one_try() -> AttemptResult:
        nonlocal count
        count += 1
        return await post_once(client, attempt, at=clock or utcnow(), limit=limit)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(2 if attempt.number == 1 else 1),
        # Retry-After asks for a wait, which the ladder honours; "at once" would ignore it.
        retry=retry_if_result(lambda outcome: retryable(outcome) and outcome.retry_after is None),
        retry_error_callback=_last_result,
    )
    result: AttemptResult = await retrying(one_try)
    return AttemptResult(result.status, result.error, result.retry_after, result.location, tries=count)


def _last_result(state: RetryCallState) -> AttemptResult:
    assert state.outcome is not None
    result: AttemptResult = state.outcome.result()
    return result


def parse_retry_after(value: str | None, *, now: datetime) -> timedelta | None:
    """Retry-After in seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def next_wait(
    attempts: int, retry_after: timedelta | None, *, rng: random.Random | None = None
) -> timedelta | None:
    """How long before the next attempt after ``attempts`` failed ones; None when out of tries."""
    if attempts > len(RETRY_LADDER):
        return None
    base = RETRY_LADDER[attempts - 1]
    wait = base * (1 + (rng or random).random() * JITTER)
    if retry_after is not None and retry_after > wait:
        wait = min(retry_after, MAX_RETRY_AFTER)
    return wait


# ---------------------------------------------------------------------------------------------
# Recording


def record_attempt(attempt: Attempt, result: AttemptResult, *, now: datetime) -> str:
    """Store the outcome of an attempt and decide the delivery's fate; return its status."""
    with session_scope() as session:
        delivery = session.get_one(Delivery, attempt.delivery_id, with_for_update=True)
        if delivery.status != "pending" or delivery.attempts != attempt.number:
            # The lease ran out and a later attempt owns the row now.
            log.warning(
                "delivery %s attempt %d: outcome %s came too late; ignored",
                delivery.id,
                attempt.number,
                result.error or result.status,
            )
            return delivery.status
        partner = session.get_one(Partner, delivery.partner_id)
        delivery.last_status = result.status
        delivery.last_error = result.error
        status = result.status
        if result.ok:
            delivery.status = "sent"
            delivery.sent_at = now
            delivery.next_attempt_at = None
        elif status == 410:
            delivery.status = "dead"
            delivery.next_attempt_at = None
            _disable(session, partner, reason=f"answered 410 Gone to delivery {delivery.id}")
        elif retryable(result):
            wait = next_wait(attempt.number, result.retry_after)
            if wait is None:
                delivery.status = "dead"
                delivery.next_attempt_at = None
                delivery.last_error = f"{result.error}; gave up after {attempt.number} attempts"
            else:
                delivery.next_attempt_at = now + wait
        else:
            # Other 4xx will not change by asking again; redirects are not followed, since
            # the partner's URL is theirs to change, and a signed push is not re-sent blind.
            delivery.status = "dead"
            delivery.next_attempt_at = None
            if status is not None and 300 <= status < 400:
                delivery.last_error = f"HTTP {status}: redirected to {result.location or '?'}; not followed"
        log.info(
            "delivery %s to %s (story %s v%s) attempt %d: %s, %s after %d tries%s",
            delivery.id,
            partner.name,
            delivery.story_id,
            delivery.story_revision,
            attempt.number,
            delivery.status,
            delivery.last_error or status,
            result.tries,
            f", next at {delivery.next_attempt_at.isoformat()}"
            if delivery.status == "pending" and delivery.next_attempt_at
            else "",
            extra=CONSOLE,
        )
        if delivery.status != "pending":
            _release_next(session, delivery)
        return delivery.status


def _disable(session: Session, partner: Partner, *, reason: str) -> None:
    partner.enabled = False
    partner.disabled_reason = reason
    dropped = _rows(
        session.execute(
            update(Delivery)
            .where(Delivery.partner_id == partner.id, Delivery.status == "pending")
            .values(status="dead", next_attempt_at=None, last_error=f"partner disabled: {reason}")
            .execution_options(synchronize_session=False)
        )
    )
    log.warning("partner %s disabled (%s); %d pending deliveries dead", partner.name, reason, dropped)


def _release_next(session: Session, delivery: Delivery) -> None:
    """Wake the next version of the same story for the same partner, now that this one is done."""
    following = session.scalars(
        select(Delivery.id)
        .where(
            _same_story(Delivery, delivery),
            Delivery.status == "pending",
            Delivery.story_revision > delivery.story_revision,
        )
        .order_by(Delivery.story_revision)
        .limit(1)
    ).first()
    if following:
        emit(session, tasknames.DELIVER, {"delivery_id": following})


# ---------------------------------------------------------------------------------------------
# One attempt, start to finish


async def complete(client: httpx.AsyncClient, attempt: Attempt) -> str:
    """Send a claimed attempt and record it (on the outbound loop of a worker)."""
    try:
        result = await send_attempt(client, attempt, limit=get_settings().partner_timeout)
        return await asyncio.to_thread(record_attempt, attempt, result, now=utcnow())
    finally:
        await asyncio.to_thread(release_slot, attempt.partner_id, attempt.delivery_id)


def deliver(delivery_id: str, *, now: datetime | None = None) -> str:
    """Make one attempt at a delivery, here and now, if it is due; return what became of it.

    ``now`` fixes the clock of the attempt (claim, signature and the next wait), for tests
    and tools; workers claim with ``claim`` and send on their outbound loop instead.
    """
    with session_scope() as session:
        attempt = claim(session, delivery_id, now=now or utcnow())
    if isinstance(attempt, str):
        return attempt

    async def run() -> AttemptResult:
        async with async_client(follow_redirects=False) as client:
            return await send_attempt(client, attempt, limit=get_settings().partner_timeout, clock=now)

    try:
        result = asyncio.run(run())
        return record_attempt(attempt, result, now=now or utcnow())
    finally:
        release_slot(attempt.partner_id, attempt.delivery_id)


# ---------------------------------------------------------------------------------------------
# The sweep and the admin's tools


def due_deliveries(session: Session, *, now: datetime, limit: int = 200) -> list[str]:
    """Deliveries whose next attempt is due and that no older pending version holds back."""
    older = aliased(Delivery)
    held = exists().where(
        _same_story(older, Delivery),
        older.story_revision < Delivery.story_revision,
        older.status == "pending",
    )
    return list(
        session.scalars(
            select(Delivery.id)
            .where(Delivery.status == "pending", Delivery.next_attempt_at <= now, ~held)
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        )
    )


def replay(
    session: Session, *, delivery_id: str | None = None, partner: str | None = None, status: str | None = None
) -> list[str]:
    """Send deliveries again, with the same webhook-id; a disabled partner is enabled again."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise Unprocessable(f"status: one of {', '.join(DELIVERY_STATUSES)}")
    query = select(Delivery)
    if delivery_id:
        query = query.where(Delivery.id == delivery_id)
    if partner:
        if session.scalar(select(Partner.id).where(Partner.name == partner)) is None:
            raise NotFound(f"partner {partner!r} not found")
        query = query.join(Partner, Partner.id == Delivery.partner_id).where(Partner.name == partner)
    if status:
        query = query.where(Delivery.status == status)
    deliveries = list(session.scalars(query.order_by(Delivery.story_id, Delivery.story_revision)))
    if delivery_id and not deliveries:
        raise NotFound(f"delivery {delivery_id} not found")
    now = utcnow()
    replayed = []
    for delivery in deliveries:
        if (
            delivery.status == "pending"
            and delivery.attempts
            and not delivery.last_error
            and delivery.last_status is None
            and (delivery.next_attempt_at or now) > now
        ):
            continue  # in flight right now
        owner = session.get_one(Partner, delivery.partner_id)
        if owner.removed_at is not None:
            raise Conflict(f"partner {owner.name!r} was removed; its deliveries are not sent again")
        if not owner.enabled:
            owner.enabled = True
            owner.disabled_reason = None
            log.warning("partner %s enabled again to replay delivery %s", owner.name, delivery.id)
        delivery.status = "pending"
        delivery.attempts = 0
        delivery.next_attempt_at = now
        emit(session, tasknames.DELIVER, {"delivery_id": delivery.id})
        replayed.append(delivery.id)
        log.info("delivery %s to %s: replayed", delivery.id, owner.name)
    return replayed
