"""Feeds, the news sitemap, and the admin's view of deliveries."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import cache as cache_function
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote

import redis
from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.syndicate import pages, service, site
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
# Pages kept in memory per API process at most (each story has one).
CACHE_ENTRIES = 4096
# A 404 may become a page soon (a story about to be published).
NOT_FOUND_CACHE_CONTROL = "public, max-age=10"
# An older page changes only when a story in it is unpublished or edited.
OLDER_CACHE_CONTROL = "public, max-age=60, stale-while-revalidate=60"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Served:
    """A stored document ready to answer with: its bytes and the raw headers of a 200 and a 304."""

    body: bytes
    etag: str
    last_modified: str
    ok_headers: list[tuple[bytes, bytes]]
    not_modified_headers: list[tuple[bytes, bytes]]
    loaded_at: float
    status: int = 200


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
    ok = [
        (b"content-type", MEDIA_TYPES[stored.format].encode()),
        (b"content-length", str(len(stored.body)).encode()),
        *validators,
    ]
    # With the security headers already in, so that the hottest path does not add them per request.
    return _Served(
        stored.body,
        stored.etag,
        last_modified,
        with_security_headers(ok),
        with_security_headers(validators),
        time.monotonic(),
    )


HTML = "text/html; charset=utf-8"
XML = "application/xml; charset=utf-8"
_PAGE_HEADERS = [(name.lower().encode(), value.encode()) for name, value in pages.SECURITY_HEADERS.items()]


def _page(
    body: bytes,
    etag: str,
    last_modified: datetime,
    *,
    media_type: str = HTML,
    cache_control: str = CACHE_CONTROL,
    status: int = 200,
) -> _Served:
    """A page ready to answer with."""
    modified = format_datetime(last_modified.astimezone(UTC), usegmt=True)
    validators = [
        (b"etag", etag.encode()),
        (b"last-modified", modified.encode()),
        (b"cache-control", cache_control.encode()),
    ]
    extra = _PAGE_HEADERS if media_type == HTML else [(b"x-content-type-options", b"nosniff")]
    if status != 200:  # an error page has no validators to revalidate with
        validators = [(b"cache-control", cache_control.encode())]
    ok = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *validators,
        *extra,
    ]
    return _Served(body, etag, modified, ok, [*validators, *extra], time.monotonic(), status)


class FeedCache:
    """Stored feeds and pages kept in memory, dropped when the renderer announces a change.

    Copies are used only while the announcement channel is subscribed; a copy loaded
    before an announcement arrived (the generation moved on) is not kept. Feeds are keyed
    by their path under /feeds/ (``all.atom``), pages by their path (``/``, ``/stories/…``);
    story pages are many, so only the most recently read are kept.

    A copy missing from memory is loaded once however many readers ask for it at the same
    time (``load_once``): after each render round, when a spike of readers finds the front
    page and every story page dropped, one load per page reaches the database, not one per
    reader.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Served] = OrderedDict()
        # Loads under way, by path and generation; touched only from the event loop.
        self._loading: dict[tuple[str, int], asyncio.Future[Any]] = {}
        # What story pages are put together from: their stored part, and the "More news" list.
        self._parts: OrderedDict[str, site.StoredPage] = OrderedDict()
        self._more_news: tuple[site.StoredPage, list[pages.Piece]] | None = None
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
                if len(self._entries) > CACHE_ENTRIES:
                    self._entries.popitem(last=False)

    async def load_once(self, path: str, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``, or the result of the same load already under way for this generation.

        A waiting reader whose leader failed (or was cancelled) loads for itself.
        """
        key = (path, self._generation)
        under_way = self._loading.get(key)
        if under_way is not None:
            shared: T | None = await asyncio.shield(under_way)
            return shared if shared is not None else await load()
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        served: T | None = None
        try:
            served = await load()
            return served
        finally:
            del self._loading[key]
            future.set_result(served)

    def part(self, path: str) -> site.StoredPage | None:
        return self._parts.get(path)

    def put_part(self, page: site.StoredPage, *, generation: int) -> None:
        with self._lock:
            if self._listening and generation == self._generation:
                self._parts[page.path] = page
                if len(self._parts) > CACHE_ENTRIES:
                    self._parts.popitem(last=False)

    @property
    def more_news(self) -> tuple[site.StoredPage, list[pages.Piece]] | None:
        return self._more_news

    def put_more_news(self, value: tuple[site.StoredPage, list[pages.Piece]], *, generation: int) -> None:
        with self._lock:
            if self._listening and generation == self._generation:
                self._more_news = value

    def drop(self, *names: str) -> None:
        """Forget the copies of these feeds and pages (all at once: they were stored together)."""
        with self._lock:
            self._generation += 1
            for name in names:
                if name.startswith(service.PAGE_PREFIX):
                    path = name[len(service.PAGE_PREFIX) :]
                    self._entries.pop(path, None)
                    self._parts.pop(path, None)
                    if path == site.MORE_NEWS:
                        self._more_news = None
                        for key in [key for key in self._entries if key.startswith(site.STORIES)]:
                            del self._entries[key]
                else:
                    for path in [path for path in self._entries if path.rpartition(".")[0] == name]:
                        del self._entries[path]

    def _reset(self, *, listening: bool) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._parts.clear()
            self._more_news = None
            self._listening = listening

    def _listen(self) -> None:
        while True:
            try:
                client = redis.Redis.from_url(
                    redis_url(), socket_timeout=None, socket_connect_timeout=2, health_check_interval=15
                )
                with client.pubsub() as pubsub:
                    pubsub.subscribe(service.FEEDS_CHANNEL)
                    while pubsub.get_message(timeout=5.0) is None:
                        pass  # the subscription's confirmation comes first
                    self._reset(listening=True)
                    while True:
                        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                        if message and message.get("type") == "message":
                            data = message["data"]
                            self.drop(*(data.decode() if isinstance(data, bytes) else str(data)).split("\n"))
            except Exception as error:
                if self._listening:
                    log.info("feed cache: change announcements lost (%s); serving from the database", error)
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


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, *, etag: str, last_modified: str
) -> bool:
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
    """Send a stored feed or page, or 304 when the request's validators match it."""
    if_none_match = if_modified_since = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if_none_match = value.decode("latin-1")
        elif name == b"if-modified-since":
            if_modified_since = value.decode("latin-1")
    if (
        served.status == 200
        and (if_none_match is not None or if_modified_since is not None)
        and not_modified(
            if_none_match, if_modified_since, etag=served.etag, last_modified=served.last_modified
        )
    ):
        await send({"type": "http.response.start", "status": 304, "headers": served.not_modified_headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": served.status, "headers": served.ok_headers})
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
            served = await cache.load_once(FEEDS + path, lambda: self._load(cache, path))
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


@cache_function
def _not_found(site_url: str, site_title: str) -> _Served:
    body = pages.render_not_found(settings=get_settings()).encode()
    return _page(body, site.etag_of(body), _EPOCH, cache_control=NOT_FOUND_CACHE_CONTROL, status=404)


def _not_found_page() -> _Served:
    settings = get_settings()
    # Kept in memory for a gone story's page like the page was: from now.
    return replace(_not_found(settings.site_url, settings.site_title), loaded_at=time.monotonic())


class PageEndpoint:
    """GET/HEAD of a reader page: ``/``, ``/stories/{slug}``, ``/tags/{slug}``,
    ``/authors/{slug}``, ``/sections/{slug}`` and ``/sitemaps/news.xml``.

    The stored page (a story page with the stored "More news" list put in) is kept in memory
    like a feed; an older page of a list (``?before=``) is rendered on request.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        cache = _cache(scope["app"])
        raw_query = scope.get("query_string", b"")
        if b"before=" in raw_query:
            served = await run_in_threadpool(_older_page, path, raw_query.decode("latin-1"))
        else:
            cached = cache.get(path)
            served = (
                cached if cached is not None else await cache.load_once(path, lambda: self._load(cache, path))
            )
        await _answer(scope, send, served)

    @staticmethod
    async def _load(cache: FeedCache, path: str) -> _Served:
        generation = cache.generation
        if path.startswith(site.STORIES):
            found = await _story_page(cache, path, generation)
        else:
            stored = await run_in_threadpool(service.load_page, path)
            found = None if stored is None else _stored_page(stored)
        if found is None:  # no page was ever stored at this address: nothing to keep
            return _not_found_page()
        cache.put(path, found, generation=generation)
        return found


def _stored_page(stored: site.StoredPage) -> _Served:
    if stored.body is None or stored.etag is None or stored.last_modified is None:
        return _not_found_page()
    media_type = XML if stored.path == site.SITEMAP else HTML
    return _page(stored.body, stored.etag, stored.last_modified, media_type=media_type)


async def _story_page(cache: FeedCache, path: str, generation: int) -> _Served | None:
    """A story page: its stored part with the stored "More news" list in its slot (a 404 when
    its story is no longer published; None when it never had a page)."""
    part = cache.part(path)
    if part is None:
        part = await run_in_threadpool(service.load_page, path)
        if part is None:
            return None
        cache.put_part(part, generation=generation)
    if part.body is None or part.etag is None or part.last_modified is None:
        return _not_found_page()
    more = cache.more_news or await cache.load_once(
        site.MORE_NEWS, lambda: _load_more_news(cache, generation)
    )
    if more is None:
        return _stored_page(part)
    body = pages.fill_story_page(part.body, more[1], part.story_id or 0)
    last_modified = max(part.last_modified, more[0].last_modified or part.last_modified)
    return _page(body, site.etag_of(body), last_modified)


async def _load_more_news(
    cache: FeedCache, generation: int
) -> tuple[site.StoredPage, list[pages.Piece]] | None:
    stored = await run_in_threadpool(service.load_page, site.MORE_NEWS)
    if stored is None or stored.body is None:
        return None
    more = (stored, pages.pieces_from_json(stored.body))
    cache.put_more_news(more, generation=generation)
    return more


def _older_page(path: str, raw_query: str) -> _Served:
    """An older page of the front page or of a tag, author or section, rendered now."""
    settings = get_settings()
    try:
        # Bounded parsing: an address of ours has two fields.
        query = parse_qs(raw_query[:200], max_num_fields=4)
        if path == site.SITEMAP or path.startswith(site.STORIES):
            raise site.BadPageKey("This page has no older pages.")
        before = site.parse_page_key(query["before"][0])
        page = int(query.get("page", ["2"])[0])
        if not 2 <= page <= site.MAX_PAGES:
            raise site.BadPageKey(f"Pages go from 2 to {site.MAX_PAGES}.")
    except (site.BadPageKey, ValueError, KeyError) as error:
        reason = str(error) if isinstance(error, site.BadPageKey) else "This address is not one of ours."
        body = pages.render_bad_request(reason, settings=settings).encode()
        return _page(body, site.etag_of(body), _EPOCH, cache_control=NOT_FOUND_CACHE_CONTROL, status=400)
    with session_scope(read_only=True) as session:
        if path == site.FRONT:
            front = site.render_front(session, settings=settings, before=before, page=page)
            rendered: bytes | None = front[0]
        else:
            key = service.list_key(path)
            rendered = (
                None
                if key is None
                else site.render_list(session, key, settings=settings, before=before, page=page)
            )
    if rendered is None or (path == site.FRONT and b'class="news-item"' not in rendered):
        return _not_found_page()
    return _page(rendered, site.etag_of(rendered), before[0], cache_control=OLDER_CACHE_CONTROL)


class FeedFastPath:
    """ASGI middleware: a feed or page already held in memory is answered before the app's
    routing.

    Everything else, a feed or page not in memory included, goes through the app as usual
    (where ``FeedEndpoint`` and ``PageEndpoint`` load it); the stored bytes and headers are
    the same either way.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            cache: FeedCache | None = (
                getattr(scope["app"].state, "feed_cache", None) if "app" in scope else None
            )
            if cache is not None:
                path: str = scope["path"]
                served: _Served | None
                if path.startswith(FEEDS):
                    served = cache.get(path[len(FEEDS) :])
                else:
                    served = None if scope.get("query_string") else cache.get(path)
                if served is not None:
                    await _answer(scope, send, served)
                    return
        await self.app(scope, receive, send)


FEEDS = "/feeds/"
router.routes.append(
    Route("/feeds/{name:path}", FeedEndpoint(), methods=["GET", "HEAD"], include_in_schema=False)
)
for _path in ("/", "/stories/{slug}", "/tags/{slug}", "/authors/{slug}", "/sections/{slug}", site.SITEMAP):
    router.routes.append(Route(_path, PageEndpoint(), methods=["GET", "HEAD"], include_in_schema=False))


@router.get("/static/site.css", include_in_schema=False)
async def stylesheet(v: str | None = None) -> Response:
    """The site's stylesheet (the only one the CSP allows)."""
    # Only the hashed URL the pages link to may be cached for good; a bare one may change.
    versioned = v is not None and pages.stylesheet_href().endswith(f"?v={v}")
    return Response(
        pages.stylesheet(),
        media_type="text/css; charset=utf-8",
        headers={
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
        },
    )


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
    caller: AdminDep,
    partner: str | None = None,
    status: str | None = None,
    story: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Deliveries, newest first, by partner, status and story. Role: admin."""
    return {"deliveries": list_deliveries(partner=partner, status=status, story_id=story, limit=limit)}
