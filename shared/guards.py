"""Limits before work: rate limits, body size, authentication before the body, security headers.

Two plain ASGI middlewares wrap the app:

- ``SecurityHeaders``, the outermost layer (outside even the 500 handler), adds nosniff,
  Referrer-Policy, X-Frame-Options and a Content-Security-Policy to every response that
  does not bring its own.
- ``Guard``, in front of routing and the stored-feed fast path, refuses what would cost us
  before it costs anything: a client over its rate limit (429), a declared body over
  ``NEWSROOM_MAX_BODY_BYTES`` (413, nothing read), a request with a body to ``/v1/`` without
  a valid bearer token (401, nothing read); and it counts a chunked body as it streams,
  answering 413 at the limit. ``POST /v1/wire/…`` keeps its own size handling (the receipt
  keeps the first 64 KB of an oversized post), after the token was checked here.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from fastapi.concurrency import run_in_threadpool
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.config import get_settings
from shared.errors import NewsroomError
from shared.web import PRINCIPAL_STATE, resolve_principal

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

# Paths a monitor polls; never rate limited (they cost nothing, and /metrics takes a token).
UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})
WIRE_PREFIX = "/v1/wire/"
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"DENY"),
)
# Anything that does not set its own policy (JSON, feeds, errors) may load and be framed by nothing;
# an HTML page without one gets the reader pages' policy (its own stylesheet, images, forms to us).
DEFAULT_CSP = b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
HTML_CSP = (
    b"default-src 'none'; img-src * data:; style-src 'self'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'"
)
# A header list that ends with one of these very objects came from ``with_security_headers``.
_DEFAULT_CSP_HEADER = (b"content-security-policy", DEFAULT_CSP)
_HTML_CSP_HEADER = (b"content-security-policy", HTML_CSP)


class SecurityHeaders:
    """Adds the security headers to every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                last = headers[-1] if headers else None
                if last is not _DEFAULT_CSP_HEADER and last is not _HTML_CSP_HEADER:  # not complete yet
                    message["headers"] = with_security_headers(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def with_security_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's headers, and those of ``SECURITY_HEADERS`` and a CSP that it does not set itself.

    Prebuilt header lists (the stored feeds') use it once, and are then passed on untouched.
    """
    out = list(headers)
    present = {name.lower(): value for name, value in out}
    out += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
    if b"content-security-policy" not in present:
        html = present.get(b"content-type", b"").startswith(b"text/html")
        out.append(_HTML_CSP_HEADER if html else _DEFAULT_CSP_HEADER)
    return out


async def _refuse(
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    text: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer a refusal: the JSON error body of the API (plain text on reader paths)."""
    if text:
        body, media_type = f"{detail}\n".encode(), b"text/plain; charset=utf-8"
    else:
        body, media_type = json.dumps({"error": code, "detail": detail}).encode(), b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised into the app when a streamed body passes the limit (the 413 is already sent).

    An HTTPException, so that FastAPI passes it on instead of calling it a malformed body.
    """

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="the body is too large")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _body_headers(scope: Scope) -> tuple[str | None, bool]:
    """The declared Content-Length, and whether the request may have a body at all."""
    declared: str | None = None
    chunked = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            declared = value.decode("latin-1")
        elif key == b"transfer-encoding":
            chunked = True
    return declared, chunked or declared is not None


def client_address(scope: Scope) -> str:
    """The client's address: the peer, or what a trusted proxy says (uvicorn's proxy_headers)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Guard:
    """Rate limits, body size and authentication, before routing and before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.limiter = RateLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        path: str = scope["path"]
        api = path.startswith("/v1/")
        if not api and path not in UNLIMITED:
            who = client_address(scope)
            wait = self.limiter.check_here("public", who)  # mostly answered from memory, no await
            if wait is False:
                wait = await self.limiter.ask_redis("public", who, settings.rate_public)
            if wait is not None:
                await _refuse(
                    send,
                    429,
                    "rate_limited",
                    f"too many requests from this address; try again in {wait} s",
                    text=True,
                    headers=[(b"retry-after", str(wait).encode())],
                )
                return
        wire = api and path.startswith(WIRE_PREFIX) and scope["method"] == "POST"
        limit = settings.max_body_bytes
        declared, has_body = _body_headers(scope)
        if not has_body and not api:
            await self.app(scope, receive, send)  # no body to count (the hot path: pages and feeds)
            return
        if not wire and declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, "too_large", f"the body is over {limit} bytes", text=not api)
            return
        if api and scope["method"] not in BODYLESS:
            try:
                caller = await run_in_threadpool(resolve_principal, _header(scope, b"authorization"))
            except NewsroomError as error:
                extra = [(b"www-authenticate", b"Bearer")] if error.status == 401 else []
                await _refuse(send, error.status, error.code, error.detail, headers=extra)
                return
            except (OperationalError, PoolTimeoutError) as error:
                # No token can be checked without the database: the client sends again later.
                log.warning("database unavailable: %s", str(error).splitlines()[0][:200])
                await _refuse(
                    send,
                    503,
                    "unavailable",
                    "the database is unavailable; try again",
                    headers=[(b"retry-after", b"5")],
                )
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE] = caller
            if wire:
                wait = await self.limiter.check("wire", str(caller.token_id), settings.rate_wire)
                if wait is not None:
                    await _refuse(
                        send,
                        429,
                        "rate_limited",
                        f"too many posts with this token; try again in {wait} s",
                        headers=[(b"retry-after", str(wait).encode())],
                    )
                    return
        if wire:
            await self.app(scope, receive, send)  # the wire endpoint reads at most its limit itself
            return
        await self._counted(scope, receive, send, limit, text=not api)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int, *, text: bool) -> None:
        """Run the app with the body counted as it arrives; 413 (and no more reading) past ``limit``."""
        received = 0
        started = answered = False

        async def counting_receive() -> Message:
            nonlocal received, answered
            if answered:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started:
                        answered = True
                        await _refuse(send, 413, "too_large", f"the body is over {limit} bytes", text=text)
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 413 went out already; whatever the app says after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not answered:
                raise
            log.debug("request ended after its oversized body was refused", exc_info=True)


@dataclass
class _Allowance:
    """Hits this process may still serve for one key without asking Redis, until ``until``."""

    left: int
    until: float
    refused: bool = False


class RateLimits:
    """Fixed-window rate limits kept in Redis (the ``limits`` package), shared by every process.

    Each process takes hits from the shared counter in small batches (a hundredth of the limit,
    at least one) and serves them from memory, so a busy client costs one Redis round trip per
    batch, not per request; a refused client is refused from memory until its window ends.
    Near the limit, a batch another process will not use is lost for that window, so a client
    may get up to 1% per process less than its limit, never more. When Redis does not answer,
    requests pass (logged), and Redis is asked again a second later.
    """

    BATCH_FRACTION = 100
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refills = [threading.Lock() for _ in range(64)]
        self._allowances: dict[tuple[str, str], _Allowance] = {}
        self._limiter: FixedWindowRateLimiter | None = None
        self._storage: RedisStorage | None = None
        self._url: str | None = None
        self._items: dict[str, RateLimitItem] = {}
        self._down_until = 0.0

    def _strategy(self) -> FixedWindowRateLimiter:
        from shared.redis import redis_url

        url = redis_url()
        if self._limiter is None or url != self._url:
            storage = RedisStorage(
                url, key_prefix="newsroom:rate", socket_timeout=1.0, socket_connect_timeout=1.0
            )
            self._storage, self._limiter, self._url = storage, FixedWindowRateLimiter(storage), url
        return self._limiter

    def _window_left(self, item: RateLimitItem, kind: str, who: str) -> float:
        """Seconds until the counter's window ends, to the millisecond.

        The window stats of ``limits`` come from Redis's TTL, in whole seconds, rounded: a
        batch taken with under half a second left seemed to end at once, so every request
        until the window's end took another batch, and a client far below its limit was
        refused (one at 10,000 requests/s with a limit of 10 million a minute). 0 when the
        window has just ended: the next request opens a new one.
        """
        storage = self._storage
        assert storage is not None  # set with the limiter
        connection = cast("redis.Redis", storage.get_connection())  # limits' client is redis-py's
        milliseconds = int(connection.pttl(storage.prefixed_key(item.key_for(kind, who))))
        if milliseconds == -1:  # no expiry: not set by limits, but then the whole window
            return float(item.get_expiry())
        return min(max(milliseconds, 0) / 1000, float(item.get_expiry()))

    def _item(self, rate: str) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(rate)
        return item

    def check_here(self, kind: str, who: str) -> int | bool | None:
        """The answer from this process's memory alone, when it has one; else False (ask Redis)."""
        allowance = self._allowances.get((kind, who))
        return False if allowance is None else self._spend(allowance, time.time())

    @staticmethod
    def _spend(allowance: _Allowance, now: float) -> int | bool | None:
        """None: allowed (one hit spent); seconds to wait: refused; False: nothing to go on."""
        if now >= allowance.until:
            return False
        if allowance.refused:
            return max(1, math.ceil(allowance.until - now))
        if allowance.left > 0:
            allowance.left -= 1
            return None
        return False

    async def check(self, kind: str, who: str, rate: str) -> int | None:
        """None when this hit is allowed; else the seconds to wait (for Retry-After)."""
        here = self.check_here(kind, who)
        if here is not False:
            return here if isinstance(here, int) else None
        return await self.ask_redis(kind, who, rate)

    async def ask_redis(self, kind: str, who: str, rate: str) -> int | None:
        """Take a batch of hits from the shared counter (see ``check``); None when Redis is down."""
        now = time.time()
        if now < self._down_until:
            return None
        try:
            return await run_in_threadpool(self._take, (kind, who), rate)
        except Exception as error:
            self._down_until = now + 1.0
            log.warning("rate limits: redis unavailable, letting requests through: %s", error)
            return None

    def _take(self, key: tuple[str, str], rate: str) -> int | None:
        """Take a batch of hits for ``key`` from Redis (blocking; run in a thread).

        One batch at a time per key: requests that found the batch spent together queue here,
        and all but the first are served from the batch the first one took.
        """
        with self._refills[hash(key) % len(self._refills)]:
            now = time.time()
            allowance = self._allowances.get(key)
            here = False if allowance is None else self._spend(allowance, now)
            if here is not False:
                return here if isinstance(here, int) else None
            item = self._item(rate)
            limiter = self._strategy()
            batch = max(1, item.amount // self.BATCH_FRACTION)
            kind, who = key
            # The counter moves by the whole batch even when it does not fit: a client near its
            # limit loses the rest of the window's hits (up to a batch), never gets more.
            refused = not limiter.hit(item, kind, who, cost=batch)
            if batch == 1 and not refused:
                self._allowances.pop(key, None)
                return None  # nothing kept in memory: no need to know when the window ends
            until = now + self._window_left(item, kind, who)
            with self._lock:
                if len(self._allowances) >= self.MAX_KEYS:
                    self._allowances = {k: v for k, v in self._allowances.items() if v.until > now}
                self._allowances[key] = _Allowance(
                    left=0 if refused else batch - 1, until=until, refused=refused
                )
            return max(1, math.ceil(until - now)) if refused else None
