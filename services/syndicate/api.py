"""Feeds, the news sitemap, and the admin's view of deliveries."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import quote

import redis
from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.syndicate import service
from services.syndicate.feeds import MEDIA_TYPES
from services.syndicate.partners import DELIVERY_STATUSES
from shared.config import get_settings
from shared.db import session_scope
from shared.errors import NotFound, Unprocessable
from shared.guards import with_security_headers
from shared.models import Delivery, Partner
from shared.redis import redis_url
from shared.web import MAX_ID, AdminDep, error_responses

log = logging.getLogger(__name__)

router = APIRouter(tags=["syndicate"])

EXTENSION_FORMATS = {"rss": "rss", "atom": "atom", "json": "json"}
CACHE_CONTROL = "public, max-age=30, stale-while-revalidate=30"
# Copies of stored feeds live in the API process; the renderer announces every change, and
# this bounds how long a copy can outlive a missed announcement.
CACHE_MAX_AGE = 30.0


@dataclass(frozen=True, slots=True)
class _Served:
    """A stored feed ready to answer with: its bytes and the raw headers of a 200 and a 304."""

    body: bytes
    etag: str
    last_modified: str
    ok_headers: list[tuple[bytes, bytes]]
    not_modified_headers: list[tuple[bytes, bytes]]
    loaded_at: float


def _served(stored: service.StoredFeed) -> _Served:
    settings = get_settings()
    last_modified = format_datetime(stored.last_modified, usegmt=True)
    self_url = f"{settings.site_url}/feeds/{quote(stored.name, safe='/')}.{stored.format}"
    links = [f'<{self_url}>; rel="self"', *(f'<{hub}>; rel="hub"' for hub in settings.hubs)]
    validators = [
        (b"etag", stored.etag.encode()),
        (b"last-modified", last_modified.encode()),
        (b"cache-control", CACHE_CONTROL.encode()),
        (b"link", ", ".join(links).encode()),
    ]
    ok = [(b"content-type", MEDIA_TYPES[stored.format].encode()),
          (b"content-length", str(len(stored.body)).encode()), *validators]  # fmt: skip
    # With the security headers already in, so that the hottest path does not add them per request.
    return _Served(stored.body, stored.etag, last_modified, with_security_headers(ok),
                   with_security_headers(validators), time.monotonic())  # fmt: skip


class FeedCache:
    """Stored feeds kept in memory, dropped when the renderer announces that one changed.

    Copies are used only while the announcement channel is subscribed; a copy loaded
    before an announcement arrived (the generation moved on) is not kept.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Served] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._listening = False
        self._thread = threading.Thread(target=self._listen, name="feed-cache", daemon=True)
        self._thread.start()

    def get(self, path: str) -> _Served | None:
        served = self._entries.get(path)
        if served is None or time.monotonic() - served.loaded_at > CACHE_MAX_AGE:
            return None
        return served

    @property
    def generation(self) -> int:
        return self._generation

    def put(self, path: str, served: _Served, *, generation: int) -> None:
        with self._lock:
            if self._listening and generation == self._generation:
                self._entries[path] = served

    def drop(self, name: str) -> None:
        with self._lock:
            self._generation += 1
            for path in [path for path in self._entries if path.rpartition(".")[0] == name]:
                del self._entries[path]

    def _reset(self, *, listening: bool) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._listening = listening

    def _listen(self) -> None:
        while True:
            try:
                client = redis.Redis.from_url(redis_url(), socket_timeout=None, socket_connect_timeout=2,
                                              health_check_interval=15)  # fmt: skip
                with client.pubsub() as pubsub:
                    pubsub.subscribe(service.FEEDS_CHANNEL)
                    while pubsub.get_message(timeout=5.0) is None:
                        pass  # the subscription's confirmation comes first
                    self._reset(listening=True)
                    while True:
                        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                        if message and message.get("type") == "message":
                            data = message["data"]
                            self.drop(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as error:
                if self._listening:
                    log.info("feed cache: change announcements lost (%s); serving from the database",
                                error)  # fmt: skip
                self._reset(listening=False)
                time.sleep(1.0)


_cache_lock = threading.Lock()


def _cache(app: Any) -> FeedCache:
    cache: FeedCache | None = getattr(app.state, "feed_cache", None)
    if cache is None:
        with _cache_lock:
            cache = getattr(app.state, "feed_cache", None)
            if cache is None:
                cache = app.state.feed_cache = FeedCache()
    return cache


def not_modified(if_none_match: str | None, if_modified_since: str | None, *, etag: str,
                 last_modified: str) -> bool:  # fmt: skip
    """Whether a conditional GET matches (If-None-Match wins over If-Modified-Since)."""
    if if_none_match is not None:
        return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in if_none_match.split(","))
    if if_modified_since:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
    return False


async def _answer(scope: Scope, send: Send, served: _Served) -> None:
    """Send a stored feed, or 304 when the request's validators match it."""
    if_none_match = if_modified_since = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if_none_match = value.decode("latin-1")
        elif name == b"if-modified-since":
            if_modified_since = value.decode("latin-1")
    if (if_none_match is not None or if_modified_since is not None) and not_modified(
        if_none_match, if_modified_since, etag=served.etag, last_modified=served.last_modified
    ):
        await send({"type": "http.response.start", "status": 304, "headers": served.not_modified_headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": served.ok_headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else served.body})


class FeedEndpoint:
    """GET/HEAD /feeds/{name}.{rss,atom,json}: stored bytes, ETag, Last-Modified, Link, 304.

    A plain ASGI app: the feed is the hottest path there is, and a copy in memory answers
    it without a Request, a Response or (mostly) the database.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path_params"]["name"]
        cache = _cache(scope["app"])
        served = cache.get(path)
        if served is None:
            served = await self._load(cache, path)
        await _answer(scope, send, served)

    @staticmethod
    async def _load(cache: FeedCache, path: str) -> _Served:
        stem, _, extension = path.rpartition(".")
        fmt = EXTENSION_FORMATS.get(extension)
        if fmt is None or not stem:
            raise NotFound(f"no feed {path!r}")
        generation = cache.generation
        stored = await run_in_threadpool(service.load_document, stem, fmt)
        if stored is None:
            raise NotFound(f"no feed {path!r}")
        served = _served(stored)
        cache.put(path, served, generation=generation)
        return served


class FeedFastPath:
    """ASGI middleware: a feed already held in memory is answered before the app's routing.

    Everything else, a feed not in memory included, goes through the app as usual (where
    ``FeedEndpoint`` loads it); the stored bytes and headers are the same either way.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"].startswith(FEEDS):
            cache: FeedCache | None = (
                getattr(scope["app"].state, "feed_cache", None) if "app" in scope else None
            )
            served = cache.get(scope["path"][len(FEEDS) :]) if cache is not None else None
            if served is not None:
                await _answer(scope, send, served)
                return
        await self.app(scope, receive, send)


FEEDS = "/feeds/"
router.routes.append(
    Route("/feeds/{name:path}", FeedEndpoint(), methods=["GET", "HEAD"], include_in_schema=False)
)


class XmlResponse(Response):
    media_type = "application/xml"


@router.get("/sitemaps/news.xml", response_class=XmlResponse, responses=error_responses(429))
def news_sitemap() -> Response:
    """Stories published in the last 48 hours, as a Google News sitemap."""
    with session_scope(read_only=True) as session:
        body = service.sitemap(session)
    return Response(body, media_type="application/xml; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=60"})  # fmt: skip


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


def list_deliveries(
    *, partner: str | None = None, status: str | None = None, story_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Deliveries, newest first, by partner, status and story."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise Unprocessable(f"status: one of {', '.join(DELIVERY_STATUSES)}")
    with session_scope(read_only=True) as session:
        query = select(Delivery, Partner.name).join(Partner, Partner.id == Delivery.partner_id)
        if partner:
            query = query.where(Partner.name == partner)
        if status:
            query = query.where(Delivery.status == status)
        if story_id is not None:
            query = query.where(Delivery.story_id == story_id)
        query = query.order_by(Delivery.created_at.desc(), Delivery.id).limit(max(1, min(limit, 1000)))
        return [delivery_view(delivery, name) for delivery, name in session.execute(query)]


@router.get("/v1/deliveries", responses=error_responses(401, 403, 422, 429))
def get_deliveries(
    caller: AdminDep, partner: str | None = None, status: str | None = None,
    story: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: int = 100,
) -> dict[str, Any]:  # fmt: skip
    """Deliveries, newest first, by partner, status and story. Role: admin."""
    return {"deliveries": list_deliveries(partner=partner, status=status, story_id=story, limit=limit)}
