"""Token lookups, on a real database and Redis: what a process keeps, and when it forgets it."""

from __future__ import annotations

import re
import secrets

import pytest
from sqlalchemy import select

from services.ingest.service import add_source
from shared import web
from shared.auth import AUTH_GENERATION, revoke_tokens
from shared.db import session_scope
from shared.errors import Forbidden, Unauthorized
from shared.models import Source
from shared.redis import get_redis
from shared.web import resolve_principal
from tests.helpers.support import statements_sent


def test_a_token_is_read_once_until_a_token_or_source_changes(newsroom: dict[str, str]) -> None:
    with session_scope() as session:
        source, token = add_source(session, name=f"auth-{secrets.token_hex(3)}")
        name = source.name
    header = f"Bearer {token}"
    with statements_sent(read_only=True) as first:
        holder = resolve_principal(header)
    # The token, and its source once: the lookup keeps the copy it read.
    assert [re.search(r"\bFROM (\w+)", s).group(1) for s in first if s.startswith("SELECT")] == [  # type: ignore[union-attr]
        "tokens",
        "sources",
    ]
    assert holder.source is not None and holder.source.name == name
    with statements_sent(read_only=True) as again:
        assert resolve_principal(header) == holder
    assert again == []

    # A change to any source moves the counter: the next lookup reads again, and sees it.
    before = int(get_redis().get(AUTH_GENERATION) or 0)
    with session_scope() as session:
        session.scalars(select(Source).where(Source.name == name)).one().enabled = False
    assert int(get_redis().get(AUTH_GENERATION) or 0) == before + 1
    with pytest.raises(Forbidden, match="disabled"):
        resolve_principal(header)
    with session_scope() as session:
        session.scalars(select(Source).where(Source.name == name)).one().enabled = True
    assert resolve_principal(header).source_id == holder.source_id
    with session_scope() as session:
        assert revoke_tokens(session, name=f"source:{name}") == 1
    with pytest.raises(Unauthorized):
        resolve_principal(header)


def test_without_redis_every_lookup_reads_the_database(
    newsroom: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with session_scope() as session:
        _, token = add_source(session, name=f"auth-{secrets.token_hex(3)}")
    header = f"Bearer {token}"
    resolve_principal(header)

    def unavailable() -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr("shared.generations.get_redis", unavailable)
    for _ in range(2):
        with statements_sent(read_only=True) as seen:
            resolve_principal(header)
        assert any(re.search(r"\bFROM tokens\b", statement) for statement in seen)
    assert len(web._held) <= web.HOLDERS_MAX
