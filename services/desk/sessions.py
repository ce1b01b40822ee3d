"""Desk sessions: a token given once becomes a server-side session behind an HttpOnly cookie.

The cookie holds only a random id; Redis holds the session (who signed in, the session's
CSRF token) under the id's hash, with a time to live. Signing out deletes it there, so a
copied cookie dies with it. Every POST carries the session's CSRF token and comes from the
site's own origin: ports on one host are one *site*, so SameSite=Strict alone would let a
page on another port post here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response

from shared.auth import find_token
from shared.config import get_settings
from shared.crypto import derive_key
from shared.db import session_scope
from shared.models import Token, utcnow
from shared.redis import get_redis

log = logging.getLogger(__name__)

COOKIE = "newsroom_desk"
# Before signing in there is no session; the sign-in form's CSRF token lives in a cookie of its own.
SIGNIN_COOKIE = "newsroom_desk_signin"
COOKIE_PATH = "/desk"
SESSION_TTL = 12 * 3600
DESK_ROLES = ("editor", "admin")
_KEY = "newsroom:desk:session:"
# The cookie's signing key is derived from NEWSROOM_SECRET_KEY for this purpose alone.
SESSION_PURPOSE = "desk-session"


@dataclass(frozen=True)
class DeskSession:
    """A signed-in editor or admin."""

    key: str
    token_id: int
    name: str
    role: str
    csrf: str
    expires_at: float

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class SignInRefused(Exception):
    """The token given at sign-in cannot open the desk; the message says why."""


def _key(session_id: str) -> str:
    return _KEY + hashlib.sha256(session_id.encode()).hexdigest()


def _signature(session_id: str) -> str:
    mac = hmac.new(derive_key(SESSION_PURPOSE), session_id.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def _cookie_value(session_id: str) -> str:
    """The cookie: the session id and its signature, so a forged one costs no Redis lookup."""
    return f"{session_id}.{_signature(session_id)}"


def _session_id(cookie: str) -> str | None:
    session_id, _, signature = cookie.rpartition(".")
    if not session_id or not hmac.compare_digest(signature.encode(), _signature(session_id).encode()):
        return None
    return session_id


def _secure() -> bool:
    return get_settings().site_url.startswith("https://")


def sign_in(token: str) -> str:
    """A new session for an editor's or admin's token; its id goes in the cookie."""
    token = token.strip()
    if not token:
        raise SignInRefused("Enter your editor or admin token.")
    with session_scope(read_only=True) as session:
        row = find_token(session, token)
        if row is None:
            raise SignInRefused("That token is not known. Check it and try again.")
        if row.role not in DESK_ROLES:
            raise SignInRefused("A wire token cannot sign in to the desk: use an editor or admin token.")
        record = {
            "token_id": row.id,
            "name": row.name,
            "role": row.role,
            "csrf": secrets.token_urlsafe(32),
            "expires_at": time.time() + SESSION_TTL,
        }
    session_id = secrets.token_urlsafe(32)
    get_redis().set(_key(session_id), json.dumps(record), ex=SESSION_TTL)
    log.info("desk: %s:%s signed in (token %s)", record["role"], record["name"], record["token_id"])
    return session_id


def current(request: Request) -> DeskSession | None:
    """The request's session, or None (no cookie, a forged one, expired, signed out, or its token
    revoked, expired or gone)."""
    cookie = request.cookies.get(COOKIE)
    session_id = _session_id(cookie) if cookie else None
    if not session_id:
        return None
    key = _key(session_id)
    raw = get_redis().get(key)
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    with session_scope(read_only=True) as session:
        # A token revoked, expired or removed since sign-in ends its sessions too.
        row = session.get(Token, record["token_id"])
        alive = (
            row is not None
            and row.revoked_at is None
            and (row.expires_at is None or row.expires_at > utcnow())
        )
    if not alive:
        get_redis().delete(key)
        return None
    return DeskSession(
        key=key,
        token_id=record["token_id"],
        name=record["name"],
        role=record["role"],
        csrf=record["csrf"],
        expires_at=record["expires_at"],
    )


def still_valid(desk: DeskSession) -> bool:
    """Whether the session still exists in Redis (checked by long-lived streams)."""
    return bool(get_redis().exists(desk.key))


def sign_out(desk: DeskSession) -> None:
    """End the session on the server."""
    get_redis().delete(desk.key)
    log.info("desk: %s signed out", desk.actor)


def set_session_cookie(response: Response, session_id: str) -> None:
    response.set_cookie(
        COOKIE,
        _cookie_value(session_id),
        max_age=SESSION_TTL,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(),
    )
    response.delete_cookie(
        SIGNIN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure()
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure())


def signin_csrf(request: Request) -> str:
    """The sign-in form's CSRF token: the one in the browser's cookie, or a new one."""
    return request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)


def set_signin_cookie(response: Response, token: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=3600,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(),
    )


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def allowed_origins(request: Request) -> set[str]:
    """The site's origin (NEWSROOM_SITE_URL) and the origin this request was addressed to."""
    origins = {_origin(get_settings().site_url)}
    host = request.headers.get("host")
    if host:
        origins.add(f"{request.url.scheme}://{host}".lower())
    return {origin for origin in origins if origin}


def check_origin(request: Request) -> None:
    """403 unless the POST comes from the site itself (Origin, else Referer)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        referer = request.headers.get("referer")
        origin = _origin(referer) if referer else None
    if not origin:
        raise HTTPException(403, "refused: a desk form must say where it comes from (Origin or Referer)")
    if origin.lower() not in allowed_origins(request):
        log.warning("desk: refused a POST to %s from %s", request.url.path, origin)
        raise HTTPException(403, f"refused: a form on {origin} cannot post to the desk")


def check_csrf(expected: str, given: str | None) -> None:
    """403 unless the form's CSRF token is the session's."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(403, "refused: the form's CSRF token is missing or wrong; reload the page")


def flash(desk: DeskSession, message: str, *, kind: str = "ok") -> None:
    """A message for the next page this session sees (after a redirect)."""
    key = desk.key + ":flash"
    client = get_redis()
    client.rpush(key, json.dumps({"kind": kind, "message": message}))
    client.expire(key, 300)


def take_flashes(desk: DeskSession) -> list[dict[str, str]]:
    """The messages waiting for this session, removed as they are read."""
    key = desk.key + ":flash"
    pipe = get_redis().pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    raw, _ = pipe.execute()
    return [json.loads(item) for item in raw]
