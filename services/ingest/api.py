"""POST /v1/wire/{source} and GET /v1/receipts/{id}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select

from services.ingest import service
from shared.config import get_settings
from shared.db import session_scope
from shared.errors import Forbidden, NotFound
from shared.models import Receipt, Source, utcnow
from shared.web import AdminDep, IdPath, Principal, PrincipalDep, error_responses

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["ingest"], responses=error_responses(401, 403, 422, 429))


class WireAccepted(BaseModel):
    """The answer to an accepted wire post."""

    receipt: int
    status_url: str
    items: int


class ReceiptItemView(BaseModel):
    guid: str | None
    story_id: int | None
    outcome: str
    error: str | None


class ReceiptView(BaseModel):
    """What became of a post and of each of its items."""

    receipt: int
    status: str
    format: str | None
    content_type: str | None
    size: int
    received_at: str
    error: dict[str, Any] | None
    items: list[ReceiptItemView]


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_NINJS = {
    "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}],
    "description": "IPTC ninjs 1.x, 2.x or 3.x: one item, or an array of them",
}
_COLUMN = {
    "type": "object",
    "required": ["guid", "headline", "body_html", "author"],
    "properties": {
        "guid": {"type": "string"},
        "version": {"type": "integer"},
        "headline": {"type": "string"},
        "lede": {"type": "string"},
        "body_html": {"type": "string"},
        "author": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "bio": {"type": "string"}},
        },
        "section": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "source_url": {"type": "string"},
        "disclaimer": {"type": "string"},
        "language": {"type": "string"},
        "written_at": {"type": "string", "format": "date-time"},
    },
}
# The body is read raw (its format comes from Content-Type), so FastAPI cannot describe it.
WIRE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A wire post; its format comes from Content-Type, else the source's format.",
        "content": {
            "application/ninjs+json": {"schema": _NINJS},
            "application/json": {"schema": _NINJS},
            "application/vnd.newsroom.column+json": {
                "schema": {"oneOf": [_COLUMN, {"type": "array", "items": _COLUMN}]}
            },
            "application/vnd.iptc.g2.newsitem+xml": _BINARY,
            "application/vnd.iptc.g2.newsmessage+xml": _BINARY,
            "application/xml": _BINARY,
            "application/rss+xml": _BINARY,
            "application/atom+xml": _BINARY,
        },
    }
}

# How much of an oversized post is kept, so the receipt shows what was sent.
OVERSIZE_HEAD_BYTES = 64 * 1024


async def _read_limited(request: Request, limit: int) -> tuple[bytes, int | None]:
    """The body; or, when it is larger than ``limit``, its head and its size (never read whole).

    The size is the declared Content-Length, else how much was read before giving up.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        head = bytearray()
        async for chunk in request.stream():
            head += chunk
            if len(head) >= OVERSIZE_HEAD_BYTES:
                break
        return bytes(head[:OVERSIZE_HEAD_BYTES]), int(declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return b"".join(chunks)[:OVERSIZE_HEAD_BYTES], size
    return b"".join(chunks), None


@router.post(
    "/wire/{source_name}",
    status_code=202,
    response_model=WireAccepted,
    responses=error_responses(400, 404, 413, 415),
    openapi_extra=WIRE_BODY,
)
async def post_wire(source_name: str, request: Request, caller: PrincipalDep) -> JSONResponse:
    """Accept a wire post: store it untouched, check it, queue it.

    Role: the source's own wire token, or an admin. Every post is kept, refused ones too
    (400, 413, 415 and 422 carry its `receipt`).
    """
    source = await run_in_threadpool(_authorize, source_name, caller)
    settings = get_settings()
    body, oversize = await _read_limited(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type")
    result = await run_in_threadpool(_store, source, content_type, body, oversize)
    if result.status != 202:
        return JSONResponse(
            {"error": result.error, "detail": result.detail, "receipt": result.receipt_id},
            status_code=result.status,
        )
    return JSONResponse(
        {
            "receipt": result.receipt_id,
            "status_url": f"/v1/receipts/{result.receipt_id}",
            "items": result.items,
        },
        status_code=202,
    )


def _authorize(source_name: str, caller: Principal) -> Source:
    if caller.role == "wire" and caller.source is not None and caller.source.name == source_name:
        return caller.source  # read with the token, a moment ago
    with session_scope(read_only=True) as session:
        source = session.scalar(select(Source).where(Source.name == source_name))
    if source is None:
        if caller.role == "admin":
            raise NotFound(f"source {source_name!r} not found")
        raise Forbidden("this token cannot post to that source")
    if caller.role != "admin" and (caller.role != "wire" or caller.source_id != source.id):
        raise Forbidden("this token cannot post to that source")
    return source


def _store(source: Source, content_type: str | None, body: bytes, oversize: int | None) -> service.PostResult:
    limit = get_settings().max_body_bytes
    # Checked before the write transaction: on SQLite writers take turns, and parsing is slow.
    check = (
        service.check_post(source=source, content_type=content_type, body=body) if oversize is None else None
    )
    with session_scope() as session:
        if check is not None:
            return service.accept_post(
                session, source=source, content_type=content_type, body=body, check=check
            )
        detail = f"the body is over {limit} bytes; the first {len(body)} bytes are kept"
        receipt = Receipt(
            source_id=source.id,
            content_type=content_type,
            body=body,
            size=oversize,
            status="rejected",
            processed_at=utcnow(),
            error={"error": "too_large", "detail": detail},
        )
        session.add(receipt)
        session.flush()
        log.info("receipt %s from %s rejected (413): %s", receipt.id, source.name, detail)
        return service.PostResult(receipt=receipt, status=413, error="too_large", detail=detail)


@router.get("/receipts/{receipt_id}", response_model=ReceiptView, responses=error_responses(404))
def get_receipt(receipt_id: IdPath, caller: PrincipalDep) -> dict[str, Any]:
    """What became of a post and of each of its items.

    Role: the wire token of the post's source, an editor or an admin.
    """
    with session_scope(read_only=True) as session:
        receipt = session.get(Receipt, receipt_id)
        if receipt is None:
            raise NotFound(f"receipt {receipt_id} not found")
        if caller.role == "wire" and caller.source_id != receipt.source_id:
            raise Forbidden("this receipt belongs to another source")
        return receipt_view(receipt)


def receipt_view(receipt: Receipt) -> dict[str, Any]:
    """A receipt as the API shows it."""
    return {
        "receipt": receipt.id,
        "status": receipt.status,
        "format": receipt.format,
        "content_type": receipt.content_type,
        "size": receipt.size,
        "received_at": receipt.created_at.isoformat(),
        "error": receipt.error,
        "items": [
            {"guid": item.guid, "story_id": item.story_id, "outcome": item.outcome, "error": item.error}
            for item in receipt.items
        ],
    }


@router.get("/sources")
def get_sources(_caller: AdminDep, failing: bool = False) -> list[dict[str, Any]]:
    """Every source with its polling state; ``?failing=true`` for those whose polls keep failing.

    Role: admin.
    """
    with session_scope(read_only=True) as session:
        return [service.source_view(source) for source in service.list_sources(session, failing=failing)]
