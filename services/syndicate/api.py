"""Feeds, the news sitemap, and the admin's view of deliveries."""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from services.syndicate import service
from services.syndicate.feeds import MEDIA_TYPES
from shared.config import get_settings
from shared.db import session_scope
from shared.errors import NotFound
from shared.models import Delivery, FeedDocument, Partner
from shared.web import AdminDep

router = APIRouter(tags=["syndicate"])

EXTENSION_FORMATS = {"rss": "rss", "atom": "atom", "json": "json"}
CACHE_CONTROL = "public, max-age=30, stale-while-revalidate=30"


class _Stored:
    __slots__ = ("body", "etag", "last_modified")

    def __init__(self, body: bytes, etag: str, last_modified: str) -> None:
        self.body, self.etag, self.last_modified = body, etag, last_modified


def _load_or_render(name: str, fmt: str) -> _Stored | None:
    with session_scope(read_only=True) as session:
        document = service.stored_document(session, name, fmt)
        if document is None:
            session.close()
            with session_scope() as writer:
                document = service.get_document(writer, name, fmt)
                if document is None:
                    return None
                return _stored(document)
        return _stored(document)


def _stored(document: FeedDocument) -> _Stored:
    return _Stored(document.body, document.etag, format_datetime(document.last_modified, usegmt=True))


def _not_modified(request: Request, stored: _Stored) -> bool:
    match = request.headers.get("if-none-match")
    if match is not None:
        return any(tag.strip() in (stored.etag, "*", f"W/{stored.etag}") for tag in match.split(","))
    since = request.headers.get("if-modified-since")
    if since:
        try:
            return parsedate_to_datetime(stored.last_modified) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False


@router.get("/feeds/{name:path}")
async def feed(name: str, request: Request) -> Response:
    """A stored feed, with ETag, Last-Modified and 304 for a matching conditional GET."""
    stem, _, extension = name.rpartition(".")
    fmt = EXTENSION_FORMATS.get(extension)
    if fmt is None or not stem:
        raise NotFound(f"no feed {name!r}")
    stored = await run_in_threadpool(_load_or_render, stem, fmt)
    if stored is None:
        raise NotFound(f"no feed {name!r}")
    settings = get_settings()
    headers = {"ETag": stored.etag, "Last-Modified": stored.last_modified, "Cache-Control": CACHE_CONTROL}
    links = [f'<{settings.site_url}/feeds/{name}>; rel="self"']
    links += [f'<{hub}>; rel="hub"' for hub in settings.hubs]
    headers["Link"] = ", ".join(links)
    if _not_modified(request, stored):
        return Response(status_code=304, headers=headers)
    return Response(stored.body, media_type=MEDIA_TYPES[fmt], headers=headers)


@router.get("/sitemaps/news.xml")
def news_sitemap() -> Response:
    """Stories published in the last 48 hours, as a Google News sitemap."""
    with session_scope(read_only=True) as session:
        body = service.sitemap(session)
    return Response(body, media_type="application/xml; charset=utf-8",
                    headers={"Cache-Control": CACHE_CONTROL})  # fmt: skip


def delivery_view(delivery: Delivery, partner: str) -> dict[str, Any]:
    """A delivery as the admin's API shows it."""
    return {
        "id": delivery.id,
        "partner": partner,
        "story_id": delivery.story_id,
        "version": delivery.story_revision,
        "event": delivery.event,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else None,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at.isoformat(),
        "sent_at": delivery.sent_at.isoformat() if delivery.sent_at else None,
    }


@router.get("/v1/deliveries")
def list_deliveries(
    caller: AdminDep, partner: str | None = None, status: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """Deliveries, newest first, by partner and status."""
    with session_scope(read_only=True) as session:
        query = select(Delivery, Partner.name).join(Partner, Partner.id == Delivery.partner_id)
        if partner:
            query = query.where(Partner.name == partner)
        if status:
            query = query.where(Delivery.status == status)
        rows = session.execute(query.order_by(Delivery.created_at.desc()).limit(min(limit, 1000)))
        return {"deliveries": [delivery_view(d, name) for d, name in rows]}
