"""Partner pushes: Standard Webhooks-signed, retried on a ladder kept in the database."""

from __future__ import annotations

import base64
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy import Exists, and_, exists, select, update
from sqlalchemy.orm import Session, aliased
from standardwebhooks.webhooks import Webhook
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from shared.config import get_settings
from shared.db import session_scope
from shared.errors import Conflict, NotFound, Unprocessable
from shared.events import emit
from shared.models import Delivery, Partner, utcnow

log = logging.getLogger(__name__)

# After the first attempt (and tenacity's one immediate retry inside it), the
# waits before each next attempt; then the delivery is dead.
RETRY_LADDER = (
    timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2),
    timedelta(hours=5), timedelta(hours=10), timedelta(hours=14), timedelta(hours=20),
    timedelta(hours=24),
)  # fmt: skip
RETRYABLE_STATUSES = frozenset({408, 429})
# A claimed attempt that never reported back is tried again after this.
ATTEMPT_LEASE = timedelta(minutes=2)
USER_AGENT = "Newsroom-Webhooks/1.0"


def add_partner(
    session: Session, *, name: str, url: str, format: str = "ninjs",
    sections: list[str] | None = None, tags: list[str] | None = None,
    labels: list[str] | None = None,
) -> Partner:  # fmt: skip
    """Create a partner with a fresh signing secret (``partner.secret``, shown once)."""
    if not url.startswith(("http://", "https://")):
        raise Unprocessable("url: a partner URL must be http(s)")
    if format != "ninjs":
        raise Unprocessable("format: only ninjs is supported")
    if session.scalar(select(Partner.id).where(Partner.name == name)) is not None:
        raise Conflict(f"partner {name!r} exists")
    # Standard Webhooks secrets are "whsec_" and base64 of random bytes.
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    partner = Partner(name=name, url=url, format=format, secret=secret,
                      sections=sections or [], tags=tags or [], labels=labels or [])  # fmt: skip
    session.add(partner)
    session.flush()
    return partner


def sign(secret: str, delivery_id: str, timestamp: datetime, body: str) -> str:
    """The webhook-signature header for one attempt."""
    return Webhook(secret).sign(delivery_id, timestamp, body)


@dataclass
class AttemptResult:
    status: int | None
    error: str | None
    retry_after: timedelta | None = None


class _RetryNow(Exception):
    """A connection failed before any answer: worth one immediate retry."""


def _post(url: str, *, headers: dict[str, str], body: bytes, timeout: float) -> httpx.Response:
    @retry(stop=stop_after_attempt(2), retry=retry_if_exception_type(_RetryNow), reraise=True)
    def attempt() -> httpx.Response:
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                return client.post(url, content=body, headers=headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as error:
            raise _RetryNow(str(error)) from error

    return attempt()


def send_once(partner: Partner, delivery: Delivery, *, now: datetime, timeout: float) -> AttemptResult:
    """One attempt: POST the signed payload and say what came back."""
    body = delivery.payload
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(partner.secret, delivery.id, now, body),
    }
    try:
        response = _post(partner.url, headers=headers, body=body.encode(), timeout=timeout)
    except _RetryNow as error:
        return AttemptResult(status=None, error=f"connection failed: {error}")
    except httpx.TimeoutException as error:
        return AttemptResult(status=None, error=f"timed out: {error!r}")
    except httpx.HTTPError as error:
        return AttemptResult(status=None, error=f"request failed: {error!r}")
    return AttemptResult(
        status=response.status_code,
        error=None if response.is_success else f"HTTP {response.status_code}",
        retry_after=parse_retry_after(response.headers.get("retry-after"), now=now),
    )


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
    """How long before the next attempt after ``attempts`` failures; None when out of tries."""
    if attempts > len(RETRY_LADDER):
        return None
    base = RETRY_LADDER[attempts - 1]
    # Up to 10% jitter so partners that failed together do not retry together.
    jitter = base * ((rng or random).random() * 0.1)
    wait = base + jitter
    if retry_after is not None and retry_after > wait:
        wait = retry_after
    return wait


def _older_pending(delivery: Delivery) -> Exists:
    older = aliased(Delivery)
    return exists().where(
        older.partner_id == delivery.partner_id,
        older.story_id == delivery.story_id,
        older.story_revision < delivery.story_revision,
        older.status == "pending",
    )


def deliver(delivery_id: str, *, now: datetime | None = None) -> str:
    """Make one attempt at a delivery if it is due and first in line; return its status."""
    now = now or utcnow()
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise NotFound(f"delivery {delivery_id} not found")
        if delivery.status != "pending":
            return delivery.status
        partner = session.get_one(Partner, delivery.partner_id)
        if not partner.enabled:
            delivery.status = "dead"
            delivery.last_error = f"partner disabled: {partner.disabled_reason}"
            return delivery.status
        # A partner never gets version n after n+1: wait for the older ones first.
        if session.scalar(select(_older_pending(delivery))):
            log.info("delivery %s waits for an older version of story %s", delivery.id, delivery.story_id)
            return "waiting"
        # The first attempt goes as soon as its task runs; later ones when due.
        attempt_no = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.status == "pending",
                   (Delivery.attempts == 0) | (Delivery.next_attempt_at <= now))
            .values(attempts=Delivery.attempts + 1, next_attempt_at=now + ATTEMPT_LEASE)
            .returning(Delivery.attempts)
            .execution_options(synchronize_session=False)
        ).scalar()  # fmt: skip
        if attempt_no is None:
            return "not due"
        session.expunge(delivery)
        session.expunge(partner)
    result = send_once(partner, delivery, now=now, timeout=settings.partner_timeout)
    return record_attempt(delivery_id, attempt_no, result, now=now)


def record_attempt(delivery_id: str, attempt_no: int, result: AttemptResult, *, now: datetime) -> str:
    """Store the outcome of an attempt and decide the delivery's fate."""
    with session_scope() as session:
        delivery = session.get_one(Delivery, delivery_id)
        partner = session.get_one(Partner, delivery.partner_id)
        delivery.last_status = result.status
        delivery.last_error = result.error
        status = result.status
        if status is not None and 200 <= status < 300:
            delivery.status = "sent"
            delivery.sent_at = now
            delivery.next_attempt_at = None
        elif status == 410:
            delivery.status = "dead"
            partner.enabled = False
            partner.disabled_reason = f"answered 410 Gone to delivery {delivery_id}"
            log.warning("partner %s disabled: 410 Gone", partner.name)
        elif status is None or status in RETRYABLE_STATUSES or status >= 500:
            wait = next_wait(attempt_no, result.retry_after)
            if wait is None:
                delivery.status = "dead"
                delivery.next_attempt_at = None
            else:
                delivery.next_attempt_at = now + wait
        else:  # other 4xx, and redirects, which are never followed
            delivery.status = "dead"
            delivery.next_attempt_at = None
        log.info("delivery %s to %s attempt %d: %s (%s)", delivery.id, partner.name, attempt_no,
                 delivery.status, result.error or status)  # fmt: skip
        if delivery.status in ("sent", "dead"):
            _release_next(session, delivery)
        return delivery.status


def _release_next(session: Session, delivery: Delivery) -> None:
    """Send the next version of the same story to the same partner, now that this one is done."""
    following = session.scalars(
        select(Delivery.id)
        .where(Delivery.partner_id == delivery.partner_id, Delivery.story_id == delivery.story_id,
               Delivery.status == "pending", Delivery.story_revision > delivery.story_revision)
        .order_by(Delivery.story_revision).limit(1)
    ).first()  # fmt: skip
    if following:
        emit(session, "syndicate.deliver", delivery_id=following)


def due_deliveries(session: Session, *, now: datetime, limit: int = 200) -> list[str]:
    """Deliveries whose next attempt is due and that are first in line for their story."""
    older = aliased(Delivery)
    blocked = exists().where(
        older.partner_id == Delivery.partner_id,
        older.story_id == Delivery.story_id,
        older.story_revision < Delivery.story_revision,
        older.status == "pending",
    )
    return list(session.scalars(
        select(Delivery.id)
        .where(and_(Delivery.status == "pending", Delivery.next_attempt_at <= now), ~blocked)
        .order_by(Delivery.next_attempt_at).limit(limit)
    ))  # fmt: skip


def replay(session: Session, *, delivery_id: str | None = None, partner: str | None = None,
           status: str | None = None) -> list[str]:  # fmt: skip
    """Send deliveries again, with the same webhook-id."""
    query = select(Delivery)
    if delivery_id:
        query = query.where(Delivery.id == delivery_id)
    if partner:
        query = query.join(Partner, Partner.id == Delivery.partner_id).where(Partner.name == partner)
    if status:
        query = query.where(Delivery.status == status)
    deliveries = list(session.scalars(query))
    if delivery_id and not deliveries:
        raise NotFound(f"delivery {delivery_id} not found")
    now = utcnow()
    for delivery in deliveries:
        delivery.status = "pending"
        delivery.attempts = 0
        delivery.next_attempt_at = now
        emit(session, "syndicate.deliver", delivery_id=delivery.id)
    return [delivery.id for delivery in deliveries]
