"""Bearer tokens: random, shown once, stored as SHA-256 hashes, compared in constant time.

A token may expire and may be revoked; either way it is refused from then on. When it
was last used is recorded at most once a minute per token, so a busy wire does not turn
every request into a write.

Every commit that changes a token or a source moves a counter in Redis
(``auth_generation``): a process may keep what a token's lookup found while the counter
stays where it was, so that a revoked token or a disabled source is refused at once.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db import after_commit, session_scope
from shared.errors import Forbidden, NotFound
from shared.generations import Generation
from shared.models import Source, Token, utcnow

log = logging.getLogger(__name__)

ROLES = ("wire", "editor", "admin")
# How stale a token's recorded last use may get before a request writes it again.
LAST_USED_EVERY = timedelta(minutes=1)

# Token hash -> when this process last recorded its use (monotonic seconds).
_noted: dict[str, float] = {}
_noted_lock = threading.Lock()


# Moved after every commit that changed a token or a source.
AUTH = Generation("newsroom:auth:generation", Token, Source)
AUTH_GENERATION = AUTH.key


def auth_generation() -> int | None:
    """Where the counter of token and source changes stands; None when Redis cannot say."""
    return AUTH.current()


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session,
    *,
    role: str,
    name: str,
    source_id: int | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """Create a token and return it; only its hash is kept."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    token = f"nr_{role}_{secrets.token_urlsafe(24)}"
    expires_at = utcnow() + expires_in if expires_in is not None else None
    session.add(
        Token(name=name, role=role, source_id=source_id, token_hash=hash_token(token), expires_at=expires_at)
    )
    session.flush()
    return token


def find_token(session: Session, token: str) -> Token | None:
    """The live token row for a presented bearer token, or None (unknown, expired or revoked).

    A wire token of a disabled source is refused with Forbidden, which says why.
    """
    found = find_holder(session, token)
    return None if found is None else found[0]


def find_holder(session: Session, token: str) -> tuple[Token, Source | None] | None:
    """``find_token``'s row with its source (a wire token's), read once."""
    digest = hash_token(token)
    row = session.scalars(select(Token).where(Token.token_hash == digest)).first()
    # The index lookup already matched; compare again in constant time for defence in depth.
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    source = None
    if row.source_id is not None:
        source = session.get(Source, row.source_id)
        if source is None or source.removed_at is not None:
            return None
        if not source.enabled:
            raise Forbidden(f"source {source.name!r} is disabled")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        # After the caller's transaction: a write nested in it would wait on itself (SQLite).
        after_commit(session, functools.partial(note_use, row.id, digest, now))
    return row, source


def note_use(token_id: int, digest: str, now: datetime) -> None:
    """Record a use unless this process or another did within the minute (checked in memory, then in SQL)."""
    with _noted_lock:
        if time.monotonic() - _noted.get(digest, -1e9) < LAST_USED_EVERY.total_seconds():
            return
        _noted[digest] = time.monotonic()
    try:
        with session_scope() as session:
            # Another process may have just written it: the condition keeps it to once a minute.
            session.execute(
                update(Token)
                .where(
                    Token.id == token_id,
                    (Token.last_used_at.is_(None)) | (Token.last_used_at < now - LAST_USED_EVERY),
                )
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
    except Exception as error:
        # Bookkeeping only: a busy database never turns a valid token away.
        log.warning("token %s: last use not recorded: %s", token_id, error)


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Every token: name, role, source, created, last used, expiry and state; never the token."""
    now = utcnow()
    rows = session.execute(
        select(Token, Source.name).outerjoin(Source, Source.id == Token.source_id).order_by(Token.id)
    ).all()
    views = []
    for token, source in rows:
        if token.revoked_at is not None:
            state = "revoked"
        elif token.expires_at is not None and token.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        views.append(
            {
                "id": token.id,
                "name": token.name,
                "role": token.role,
                "source": source,
                "created_at": token.created_at.isoformat(),
                "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
                "expires_at": token.expires_at.isoformat() if token.expires_at else None,
                "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
                "state": state,
            }
        )
    return views


def revoke_tokens(session: Session, *, name: str) -> int:
    """Revoke every live token of this name; NotFound when there is none."""
    now = utcnow()
    rows = list(session.scalars(select(Token).where(Token.name == name, Token.revoked_at.is_(None))))
    if not rows:
        raise NotFound(f"no live token named {name!r}")
    for row in rows:
        row.revoked_at = now
    log.info("revoked %d token(s) named %s", len(rows), name)
    return len(rows)


def revoke_source_tokens(session: Session, *, source_id: int) -> int:
    """Revoke a source's wire tokens (when it is removed)."""
    now = utcnow()
    rows = list(
        session.scalars(select(Token).where(Token.source_id == source_id, Token.revoked_at.is_(None)))
    )
    for row in rows:
        row.revoked_at = now
    return len(rows)
