"""The retention policy on each database: old rows go in batches, what is still needed stays.

Rows are made old by their timestamps (the pipeline's database is shared by every test of a
backend, and every other test's rows are new, so the policy's cutoffs leave them alone).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.cli import main
from services.ingest.service import retry_receipt
from shared import retention
from shared.db import session_scope
from shared.errors import Conflict
from shared.models import Delivery, OutboxEvent, Partner, Receipt, ReceiptItem, Source, Story, utcnow
from shared.redis import get_redis
from tests.helpers.pipeline import Pipeline

pytestmark = pytest.mark.pipeline

NOW = utcnow()
FAR = NOW + timedelta(days=3650)


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


@dataclass
class Aged:
    """Rows of each kind, old and new, needed and not."""

    receipts: dict[str, int]
    outbox: dict[str, int]
    deliveries: dict[str, str]


def _receipt(session: Session, source_id: int, *, status: str, created: datetime) -> int:
    receipt = Receipt(
        source_id=source_id,
        content_type="application/json",
        format="ninjs",
        body=b'{"raw": "post"}',
        size=15,
        status=status,
        created_at=created,
    )
    session.add(receipt)
    session.flush()
    session.add(ReceiptItem(receipt_id=receipt.id, position=0, guid="g", outcome="created"))
    return receipt.id


@pytest.fixture
def aged(pipeline: Pipeline) -> Iterator[Aged]:
    token = secrets.token_hex(4)
    with session_scope() as session:
        source = Source(name=f"retention-{token}", format="ninjs")
        session.add(source)
        partner = Partner(
            name=f"retention-{token}",
            url="http://127.0.0.1:9/",
            secret="whsec_AAAA",
            tags=[f"nothing-{token}"],
        )
        session.add(partner)
        session.flush()
        receipts = {
            "done_40d": _receipt(session, source.id, status="done", created=ago(40)),
            "rejected_100d": _receipt(session, source.id, status="rejected", created=ago(100)),
            "pending_100d": _receipt(session, source.id, status="pending", created=ago(100)),
            "done_new": _receipt(session, source.id, status="done", created=NOW),
        }
        events = {
            "done_3d": OutboxEvent(
                task="test.retention", kwargs={}, created_at=ago(4), sent_at=ago(4), done_at=ago(3)
            ),
            # Never sent, and not due before the test ends: the relay leaves it alone.
            "undone_10d": OutboxEvent(task="test.retention", kwargs={}, created_at=ago(10), next_try_at=FAR),
            "done_new": OutboxEvent(
                task="test.retention", kwargs={}, created_at=NOW, sent_at=NOW, done_at=NOW
            ),
        }
        session.add_all(events.values())
        stories = [
            Story(
                source_id=source.id,
                guid=f"urn:retention:{token}:{n}",
                slug=f"retention-{token}-{n}",
                headline="Retention",
                body_html="<p>Kept.</p>",
                content_hash=token,
            )
            for n in (1, 2)
        ]
        session.add_all(stories)
        session.flush()
        shapes = {
            "sent_v1_40d": ("sent", 1, ago(40)),
            "sent_v2_40d": ("sent", 2, ago(40)),
            "superseded_40d": ("superseded", 3, ago(40)),
            "dead_40d": ("dead", 4, ago(40)),
            "pending_40d": ("pending", 5, ago(40)),
            # Another story's: the newest sent version is the story's own, not the partner's.
            "other_story_sent_new": ("sent", 6, NOW),
        }
        deliveries = {}
        for key, (status, version, created) in shapes.items():
            delivery_id = f"msg_{secrets.token_hex(12)}"
            story_id = stories[1 if key.startswith("other") else 0].id
            session.add(
                Delivery(
                    id=delivery_id,
                    partner_id=partner.id,
                    story_id=story_id,
                    story_revision=version,
                    event="story.published",
                    payload="{}",
                    status=status,
                    created_at=created,
                    next_attempt_at=FAR if status == "pending" else None,
                )
            )
            deliveries[key] = delivery_id
        session.flush()
        outbox = {key: event.id for key, event in events.items()}
    yield Aged(receipts, outbox, deliveries)
    with session_scope() as session:
        session.get_one(Partner, partner.id).enabled = False
        session.execute(delete(Delivery).where(Delivery.partner_id == partner.id))
        session.execute(delete(OutboxEvent).where(OutboxEvent.task == "test.retention"))


def snapshot(aged: Aged) -> dict[str, object]:
    """What each aged row looks like now (None when gone)."""
    with session_scope(read_only=True) as session:
        found: dict[str, object] = {}
        for key, receipt_id in aged.receipts.items():
            receipt = session.get(Receipt, receipt_id)
            found[f"receipt {key}"] = (
                None if receipt is None else (bytes(receipt.body), receipt.body_pruned_at is not None)
            )
        for key, event_id in aged.outbox.items():
            found[f"outbox {key}"] = session.get(OutboxEvent, event_id) is not None
        for key, delivery_id in aged.deliveries.items():
            found[f"delivery {key}"] = session.get(Delivery, delivery_id) is not None
        return found


def test_dry_run_then_prune(
    aged: Aged, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(aged)
    would = retention.prune(dry_run=True)
    assert snapshot(aged) == before  # a dry run changes nothing
    main(["prune", "--dry-run"])
    out = capsys.readouterr().out
    assert (
        f"would remove {would['raw_posts']} raw posts" in out and f"{would['deliveries']} deliveries" in out
    )
    assert snapshot(aged) == before
    for kind in retention.KINDS:
        assert would[kind] >= 1, kind

    monkeypatch.setattr(retention, "BATCH", 1)  # several batches, one short transaction each
    main(["prune"])
    assert "removed" in capsys.readouterr().out
    after = snapshot(aged)
    assert after == {
        # Raw bytes go after 30 days (the receipt stays, marked), whole receipts after 90,
        # pending ones never.
        "receipt done_40d": (b"", True),
        "receipt rejected_100d": None,
        "receipt pending_100d": (b'{"raw": "post"}', False),
        "receipt done_new": (b'{"raw": "post"}', False),
        "outbox done_3d": False,
        "outbox undone_10d": True,
        "outbox done_new": True,
        # Sent versions go once a newer one was sent; the newest sent, dead and pending stay.
        "delivery sent_v1_40d": False,
        "delivery sent_v2_40d": True,
        "delivery superseded_40d": False,
        "delivery dead_40d": True,
        "delivery pending_40d": True,
        "delivery other_story_sent_new": True,
    }
    with session_scope(read_only=True) as session:
        assert (
            session.scalar(
                select(ReceiptItem.id).where(ReceiptItem.receipt_id == aged.receipts["rejected_100d"])
            )
            is None
        )
    with session_scope() as session, pytest.raises(Conflict, match="pruned"):
        retry_receipt(session, aged.receipts["done_40d"])
    # Run again: nothing of these is left to go.
    retention.prune()
    assert snapshot(aged) == after


def test_zero_keeps_a_kind_for_ever(aged: Aged, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import reset_settings

    for name in ("RAW", "RECEIPTS", "OUTBOX", "DELIVERIES"):
        monkeypatch.setenv(f"NEWSROOM_RETAIN_{name}_DAYS", "0")
    reset_settings()
    try:
        before = snapshot(aged)
        assert retention.prune() == dict.fromkeys(retention.KINDS, 0)
        assert snapshot(aged) == before
    finally:
        monkeypatch.undo()
        reset_settings()


def test_one_run_an_hour_across_schedulers(newsroom: dict[str, str]) -> None:
    get_redis().delete(retention.CLAIM_KEY)
    assert retention.claim() is True
    assert retention.claim() is False  # a second scheduler finds it claimed
    assert 3500 < int(get_redis().ttl(retention.CLAIM_KEY)) <= 3600
