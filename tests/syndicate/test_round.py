"""A render round: the flagged story pages and ``all`` (with the front page) are read in one
transaction and stored in one; a failure storing one of them does not hold up the other."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, select

from services.syndicate import service, site
from services.syndicate.feeds import FeedKey
from shared.db import get_engine, session_scope
from shared.models import Feed, Page
from tests.helpers.newsdesk import unique

# A worker of another test module may be rendering at the same moment: a round that finds
# the locks taken is tried again.
ATTEMPTS = 10


def flag(paths: list[str]) -> None:
    with session_scope() as session:
        site.flag_pages(session, paths)
        service.mark_dirty(session, [FeedKey("all")])


def all_feed() -> tuple[int, datetime | None]:
    with session_scope(read_only=True) as session:
        row = session.execute(select(Feed.renders, Feed.rendered_at).where(Feed.key == "all")).one()
    return row.renders, row.rendered_at


def pages(paths: list[str]) -> list[tuple[datetime | None, datetime | None]]:
    with session_scope(read_only=True) as session:
        rows = session.execute(select(Page.dirty_at, Page.rendered_at).where(Page.path.in_(paths)))
        return [(row.dirty_at, row.rendered_at) for row in rows]


def test_story_pages_and_all_are_read_in_one_transaction_and_stored_in_one(
    newsroom: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [f"/stories/{unique('round')}" for _ in range(3)]  # no such stories: pages "gone"
    begun: list[str] = []
    at_store: list[int] = []
    store_round = service._store_round

    def counted(*args: Any) -> tuple[int, int]:
        result = store_round(*args)
        at_store.append(len(begun))
        return result

    monkeypatch.setattr(service, "_store_round", counted)
    listeners = [
        (get_engine(), lambda _connection: begun.append("write")),
        (get_engine(read_only=True), lambda _connection: begun.append("read")),
    ]
    for engine, listener in listeners:
        event.listen(engine, "begin", listener)
    try:
        for _ in range(ATTEMPTS):
            flag(paths)
            renders_before, _ = all_feed()
            begun.clear()
            at_store.clear()
            service.render_dirty()
            renders, rendered_at = all_feed()
            stored = pages(paths)
            if renders > renders_before and all(dirty is None for dirty, _ in stored):
                break
        else:
            pytest.fail("no round of this test's own rendered its pages and `all`")
    finally:
        for engine, listener in listeners:
            event.remove(engine, "begin", listener)
    # Up to the store: one read, one write (the old rounds took five).
    assert begun[: at_store[0]] == ["read", "write"]
    # From the same read: the pages and the feed carry the same moment.
    assert [when for _, when in stored] == [rendered_at] * len(paths)


def test_a_page_that_cannot_be_stored_does_not_hold_up_all(
    newsroom: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [f"/stories/{unique('stuck')}" for _ in range(2)]

    def refuse(self: Any, session: Any) -> list[str]:
        raise RuntimeError("this page cannot be stored")

    monkeypatch.setattr(service._PagesRender, "store", refuse)
    for _ in range(ATTEMPTS):
        flag(paths)
        renders_before, _ = all_feed()
        service.render_dirty()
        if all_feed()[0] > renders_before:
            break
    else:
        pytest.fail("`all` was not rendered beside pages that could not be stored")
    # The pages keep their flags for the next round: none is left unflagged without having been
    # stored (the session's worker, whose rounds are not patched, may store them meanwhile).
    assert all(dirty is not None or rendered is not None for dirty, rendered in pages(paths))
