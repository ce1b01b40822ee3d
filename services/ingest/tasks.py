"""Ingest's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from services.ingest import service
from shared.batches import run_batch
from shared.config import get_settings
from shared.db import session_scope
from shared.outbox import finish
from shared.tasknames import POLL_SOURCE, PROCESS_RECEIPT
from shared.tasks import batch_task, newsroom_task

# Receipts taken in one transaction by a batch run.
BATCH = 50


@newsroom_task(PROCESS_RECEIPT)
def process_receipt(receipt_id: int) -> None:
    """Turn a stored post's items into stories."""
    # Parsed first, outside the write transaction: on SQLite writers take turns.
    with session_scope(read_only=True) as session:
        parsed = service.parse_receipt(session, receipt_id)
    with session_scope() as session:
        service.process_receipt(session, receipt_id, parsed=parsed)
        finish(session)


@batch_task(PROCESS_RECEIPT)
def process_receipts() -> None:
    """Turn the waiting posts into stories, up to ``BATCH`` of them in one transaction."""
    # On SQLite writers take turns: the posts are parsed before the write transaction.
    prepare = _parse if get_settings().sqlalchemy_url.startswith("sqlite") else None
    run_batch(PROCESS_RECEIPT, _process, prepare=prepare, limit=BATCH)


def _parse(session: Session, kwargs: dict[str, Any]) -> service.ParsedReceipt:
    return service.parse_receipt(session, kwargs["receipt_id"])


def _process(session: Session, kwargs: dict[str, Any], parsed: service.ParsedReceipt | None) -> None:
    service.process_receipt(session, kwargs["receipt_id"], parsed=parsed)


@newsroom_task(POLL_SOURCE)
def poll_source(source_id: int) -> None:
    """Fetch a polled source's document and take it in like a push (queued by the scheduler)."""
    with session_scope() as session:
        request = service.claim_poll(session, source_id=source_id)
    # No transaction is held open while the network is slow.
    response = service.fetch_poll(request)
    with session_scope() as session:
        service.record_poll(session, request=request, response=response)
