"""Ingest's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from services.ingest import service
from shared.celery import newsroom_task, run_gathered
from shared.config import get_settings
from shared.db import session_scope

# Receipts taken in one transaction by a gathered run.
BATCH = 50


@newsroom_task("ingest.process_receipt")
def process_receipt(receipt_id: int | None = None) -> None:
    """Turn a stored post's items into stories; without a receipt, a batch of the posts waiting.

    The API's posts are gathered events (``shared.celery.run_gathered``): under load one run
    takes many receipts in one transaction.
    """
    if receipt_id is None:
        # On SQLite writers take turns: the posts are parsed before the write transaction.
        prepare = _parse if get_settings().sqlalchemy_url.startswith("sqlite") else None
        run_gathered("ingest.process_receipt", _process, prepare=prepare, limit=BATCH)
        return
    # Parsed first, outside the write transaction: on SQLite writers take turns.
    with session_scope(read_only=True) as session:
        parsed = service.parse_receipt(session, receipt_id)
    with session_scope() as session:
        service.process_receipt(session, receipt_id, parsed=parsed)


def _parse(session: Session, kwargs: dict[str, Any]) -> service.ParsedReceipt:
    return service.parse_receipt(session, kwargs["receipt_id"])


def _process(session: Session, kwargs: dict[str, Any], parsed: service.ParsedReceipt | None) -> None:
    service.process_receipt(session, kwargs["receipt_id"], parsed=parsed)


@newsroom_task("ingest.poll_source")
def poll_source(source_id: int) -> None:
    """Fetch a polled source's document and take it in like a push (queued by the scheduler)."""
    with session_scope() as session:
        request = service.claim_poll(session, source_id=source_id)
    # No transaction is held open while the network is slow.
    response = service.fetch_poll(request)
    with session_scope() as session:
        service.record_poll(session, request=request, response=response)
