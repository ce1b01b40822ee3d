"""Ingest's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from services.ingest import service
from shared.celery import newsroom_task
from shared.db import session_scope


@newsroom_task("ingest.process_receipt")
def process_receipt(receipt_id: int) -> None:
    """Turn a stored post's items into stories."""
    with session_scope() as session:
        service.process_receipt(session, receipt_id)
