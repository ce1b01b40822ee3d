"""The enabled partners' filters, as a publish reads them: kept by a process until a partner
changes anywhere, on a real database and Redis."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from services.syndicate import partners
from shared import announce
from shared.db import get_engine, session_scope

HOOK = "http://127.0.0.1:9/hook"  # never called: nothing here publishes


@contextmanager
def partner_reads() -> Iterator[list[str]]:
    """The statements reading the partners' table that this process sends meanwhile."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if re.search(r"\bFROM partners\b", statement):
            seen.append(statement)

    engines = {get_engine(), get_engine(read_only=True)}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def enabled() -> list[announce.PartnerFilter]:
    with session_scope() as session:
        return announce.enabled_partners(session)


def test_partners_are_read_once_until_one_changes(newsroom: dict[str, str]) -> None:
    name = f"filters-{secrets.token_hex(3)}"
    with session_scope() as session:
        partner = partners.add_partner(session, name=name, url=HOOK, tags=["Harbour"])
        partner_id = partner.id
    with partner_reads() as first:
        listed = enabled()
    assert len(first) == 1
    [mine] = [p for p in listed if p.id == partner_id]
    assert (mine.tags, mine.sections, mine.labels) == (["Harbour"], [], [])
    with partner_reads() as again:
        assert enabled() == listed
    assert again == []

    # Disabled anywhere: the next publish reads them again, and leaves it out.
    with session_scope() as session:
        partners.disable_partner(session, name=name)
    with partner_reads() as after_change:
        assert partner_id not in [p.id for p in enabled()]
    assert len(after_change) == 1

    # A transaction that changed a partner sees its own change, and keeps nothing of it.
    with session_scope() as session:
        partners.enable_partner(session, name=name)
        assert partner_id in [p.id for p in announce.enabled_partners(session)]
        session.rollback()
    assert partner_id not in [p.id for p in enabled()]


def test_without_redis_partners_are_read_at_every_publish(
    newsroom: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    enabled()

    def unavailable() -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr("shared.generations.get_redis", unavailable)
    for _ in range(2):
        with partner_reads() as seen:
            enabled()
        assert len(seen) == 1
