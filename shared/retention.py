"""The retention policy: what is old enough to go, and never what is still needed.

- raw post bytes: after NEWSROOM_RETAIN_RAW_DAYS (30) the receipt keeps its row and
  outcome, marked pruned, without the bytes; never while it is pending;
- receipts, with their items: after NEWSROOM_RETAIN_RECEIPTS_DAYS (90); never pending ones;
- outbox events: NEWSROOM_RETAIN_OUTBOX_DAYS (2) after they were done; never undone ones;
- deliveries: after NEWSROOM_RETAIN_DELIVERIES_DAYS (30), superseded ones, and sent ones
  once a newer version of the story went to the partner; never pending or dead ones (a
  dead one may be replayed), nor the newest sent version of a story to a partner (it is
  what keeps an older version from ever following it).

0 keeps a kind for ever. Rows go in batches of ``BATCH`` per transaction, so no run
holds a lock for long; the scheduler runs the policy at most once an hour, claimed in
Redis so that two schedulers do not both run it (running it twice would only find less).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from shared.config import get_settings
from shared.db import session_scope
from shared.models import Delivery, OutboxEvent, Receipt, ReceiptItem, utcnow
from shared.redis import get_redis

log = logging.getLogger(__name__)

BATCH = 500
EVERY = timedelta(hours=1)
CLAIM_KEY = "newsroom:retention:claimed"
KINDS = ("raw_posts", "receipts", "outbox", "deliveries")


@dataclass(frozen=True)
class Rule:
    """One kind of row: which ids may go (oldest first), and how they go."""

    kind: str
    days: int
    candidates: Callable[[datetime], Select[Any]]
    remove: Callable[[Session, list[Any], datetime], None]


def _raw_posts(cutoff: datetime) -> Select[Any]:
    return (
        select(Receipt.id)
        .where(Receipt.created_at < cutoff, Receipt.status != "pending", Receipt.body_pruned_at.is_(None))
        .order_by(Receipt.created_at)
    )


def _drop_raw(session: Session, ids: list[Any], now: datetime) -> None:
    session.execute(
        update(Receipt)
        .where(Receipt.id.in_(ids), Receipt.status != "pending")
        .values(body=b"", body_pruned_at=now)
        .execution_options(synchronize_session=False)
    )


def _receipts(cutoff: datetime) -> Select[Any]:
    return (
        select(Receipt.id)
        .where(Receipt.created_at < cutoff, Receipt.status != "pending")
        .order_by(Receipt.created_at)
    )


def _drop_receipts(session: Session, ids: list[Any], _now: datetime) -> None:
    session.execute(delete(ReceiptItem).where(ReceiptItem.receipt_id.in_(ids)))
    session.execute(delete(Receipt).where(Receipt.id.in_(ids), Receipt.status != "pending"))


def _outbox(cutoff: datetime) -> Select[Any]:
    return (
        select(OutboxEvent.id)
        .where(OutboxEvent.done_at.is_not(None), OutboxEvent.done_at < cutoff)
        .order_by(OutboxEvent.done_at)
    )


def _drop_outbox(session: Session, ids: list[Any], _now: datetime) -> None:
    session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids), OutboxEvent.done_at.is_not(None)))


def _finished_delivery(cutoff: datetime) -> ColumnElement[bool]:
    newer = aliased(Delivery)
    newer_sent = exists().where(
        newer.partner_id == Delivery.partner_id,
        newer.story_id == Delivery.story_id,
        newer.story_revision > Delivery.story_revision,
        newer.status == "sent",
    )
    return and_(
        Delivery.created_at < cutoff,
        (Delivery.status == "superseded") | ((Delivery.status == "sent") & newer_sent),
    )


def _deliveries(cutoff: datetime) -> Select[Any]:
    return select(Delivery.id).where(_finished_delivery(cutoff)).order_by(Delivery.created_at)


def _drop_deliveries(session: Session, ids: list[Any], _now: datetime) -> None:
    session.execute(delete(Delivery).where(Delivery.id.in_(ids), Delivery.status.in_(("sent", "superseded"))))


def rules() -> list[Rule]:
    """The policy as the settings say."""
    settings = get_settings()
    return [
        Rule("raw_posts", settings.retain_raw_days, _raw_posts, _drop_raw),
        Rule("receipts", settings.retain_receipts_days, _receipts, _drop_receipts),
        Rule("outbox", settings.retain_outbox_days, _outbox, _drop_outbox),
        Rule("deliveries", settings.retain_deliveries_days, _deliveries, _drop_deliveries),
    ]


def prune(*, dry_run: bool = False, now: datetime | None = None) -> dict[str, int]:
    """Apply the policy now; return how many rows of each kind went (or would go, with ``dry_run``)."""
    now = now or utcnow()
    counts = {}
    for rule in rules():
        if rule.days <= 0:
            counts[rule.kind] = 0
            continue
        cutoff = now - timedelta(days=rule.days)
        if dry_run:
            with session_scope(read_only=True) as session:
                found = session.scalar(select(func.count()).select_from(rule.candidates(cutoff).subquery()))
            counts[rule.kind] = int(found or 0)
            continue
        counts[rule.kind] = _prune_rule(rule, cutoff, now)
    if not dry_run and any(counts.values()):
        log.info("retention: pruned %s", ", ".join(f"{count} {kind}" for kind, count in counts.items()))
    return counts


def _prune_rule(rule: Rule, cutoff: datetime, now: datetime) -> int:
    total = 0
    while True:
        # One short transaction per batch: other writers get their turn in between.
        with session_scope() as session:
            ids = list(session.scalars(rule.candidates(cutoff).limit(BATCH)))
            if ids:
                rule.remove(session, ids, now)
        total += len(ids)
        if len(ids) < BATCH:
            return total


def claim(every: timedelta = EVERY) -> bool:
    """Whether this process runs the policy now (at most once per ``every``, across processes)."""
    return bool(get_redis().set(CLAIM_KEY, utcnow().isoformat(), nx=True, ex=int(every.total_seconds())))


_running = threading.Lock()


def run_if_due() -> bool:
    """Start the policy on a thread of its own when due and claimed; the caller never waits for it."""
    if _running.locked():
        return False
    try:
        if not claim():
            return False
    except Exception as error:
        log.warning("retention: not claimed: %s", error)
        return False

    def work() -> None:
        with _running:
            try:
                prune()
            except Exception:
                log.exception("retention run failed")

    threading.Thread(target=work, name="newsroom-retention", daemon=True).start()
    return True
