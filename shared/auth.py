"""Bearer tokens: random, shown once, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Token

ROLES = ("wire", "editor", "admin")


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, role: str, name: str, source_id: int | None = None) -> str:
    """Create a token and return it; only its hash is kept."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    token = f"nr_{role}_{secrets.token_urlsafe(24)}"
    session.add(Token(name=name, role=role, source_id=source_id, token_hash=hash_token(token)))
    session.flush()
    return token


def find_token(session: Session, token: str) -> Token | None:
    """The token row for a presented bearer token, or None."""
    digest = hash_token(token)
    row = session.scalars(select(Token).where(Token.token_hash == digest)).first()
    # The index lookup already matched; compare again in constant time for defence in depth.
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row
