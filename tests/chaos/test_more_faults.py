"""Faults of the database, of a partner over hours, and of the scheduler run twice."""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text

from services.syndicate import partners
from shared.config import get_settings
from shared.db import session_scope
from shared.models import Delivery, Revision, Story, utcnow
from tests.helpers.chaos import ninjs, settle, setup_newsroom
from tests.helpers.cluster import Cluster
from tests.helpers.support import Reply

pytestmark = pytest.mark.chaos


def test_sqlite_locked_for_seconds_mid_burst(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    guids = [f"urn:chaos:lock:{secrets.token_hex(4)}:{i}" for i in range(100)]
    path = get_settings().sqlalchemy_url.removeprefix("sqlite:///")
    released = threading.Event()

    def hold_lock() -> None:
        blocker = sqlite3.connect(path, timeout=30, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        released.wait(3)
        blocker.execute("ROLLBACK")
        blocker.close()

    holder = threading.Thread(target=hold_lock)
    receipts = cluster.burst(source, token, [ninjs(g) for g in guids[:50]], workers=4)
    holder.start()
    time.sleep(3.5)
    holder.join()
    receipts += cluster.burst(source, token, [ninjs(g) for g in guids[50:]], workers=4)
    settle(receipts, set(guids), partner)
    partner.close()


def test_postgres_unreachable_for_seconds(cluster_pg: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    guids = [f"urn:chaos:pg:{secrets.token_hex(4)}:{i}" for i in range(60)]
    url = get_settings().sqlalchemy_url
    database = url.rsplit("/", 1)[1]
    admin = create_engine(url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")

    receipts = cluster_pg.burst(source, token, [ninjs(g) for g in guids[:30]], workers=4)
    with admin.connect() as connection:
        # New connections are refused and open ones are cut, as if the server went away.
        connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        cut = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db")
        connection.execute(cut, {"db": database})
        time.sleep(3)
        connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    admin.dispose()
    from shared.db import dispose_engines

    dispose_engines()  # this process's pooled connections were cut too
    receipts += cluster_pg.burst(source, token, [ninjs(g) for g in guids[30:]], workers=4)
    settle(receipts, set(guids), partner)
    partner.close()


def test_partner_down_for_two_hours(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    partner.default = Reply(status=503)
    guid = f"urn:chaos:partner:{secrets.token_hex(4)}"
    [receipt] = cluster.burst(source, token, [ninjs(guid)], workers=1)

    def first_attempt_failed() -> Delivery | None:
        with session_scope(read_only=True) as session:
            row = session.scalars(select(Delivery).join(Story).where(Story.guid == guid)).first()
            return row if row is not None and row.attempts == 1 and row.last_status == 503 else None

    from tests.helpers.support import wait_for

    delivery = wait_for(first_attempt_failed, timeout=30, what="the first attempt to fail")
    # From here the test holds the clock: no worker or scheduler acts on their own time.
    cluster.stop("worker")
    cluster.stop("scheduler")
    now = delivery.next_attempt_at
    assert now is not None
    waits = [now - (delivery.created_at)]
    down_until = delivery.created_at + timedelta(hours=2)
    while now < down_until:
        with session_scope(read_only=True) as session:
            assert delivery.id not in partners.due_deliveries(session, now=now - timedelta(seconds=1))
            assert delivery.id in partners.due_deliveries(session, now=now)
        assert partners.deliver(delivery.id, now=now) == "pending"
        with session_scope(read_only=True) as session:
            row = session.get(Delivery, delivery.id)
            assert row is not None and row.next_attempt_at is not None
            waits.append(row.next_attempt_at - now)
            now = row.next_attempt_at
    partner.default = Reply(status=204)
    assert partners.deliver(delivery.id, now=now) == "sent"
    assert partners.deliver(delivery.id, now=now + timedelta(hours=1)) == "sent"  # nothing more to do
    # The waits followed the ladder (5 s, 5 min, 30 min, 2 h …) with at most 10% jitter.
    assert len(waits) >= 4
    for step, wait in zip(partners.RETRY_LADDER, waits, strict=False):
        assert step <= wait <= step * 1.1 + timedelta(seconds=2), (step, wait)
    ids = {push.headers["webhook-id"] for push in partner.pushes}
    assert ids == {delivery.id}
    # The first attempt and its retry "at once", one push per later attempt, then the one that landed.
    assert len(partner.pushes) == 1 + len(waits) + 1
    with session_scope(read_only=True) as session:
        assert session.get(Delivery, delivery.id).status == "sent"  # type: ignore[union-attr]
    del receipt
    partner.close()


def test_two_schedulers_publish_once(cluster: Cluster) -> None:
    cluster.start("scheduler2", "scheduler")
    source, token, partner, _ = setup_newsroom(auto_publish=False)
    guids = [f"urn:chaos:sched:{secrets.token_hex(4)}:{i}" for i in range(40)]
    receipts = cluster.burst(source, token, [ninjs(g) for g in guids], workers=4)
    editor = cluster_token("editor")
    from tests.helpers.support import wait_for

    def story_ids() -> list[int] | None:
        with session_scope(read_only=True) as session:
            ids = list(session.scalars(select(Story.id).where(Story.guid.in_(guids))))
        return ids if len(ids) == len(guids) else None

    ids = wait_for(story_ids, timeout=60, what="the stories")
    # Due once all 40 are scheduled: the moment is taken after the stories exist (their
    # ingest may take seconds on a busy machine), with room for the 40 requests.
    when = utcnow() + timedelta(seconds=10)
    at = when.isoformat()
    for story_id in ids:
        answer = cluster.http.post(f"/v1/stories/{story_id}/publish", json={"at": at}, headers=editor)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "scheduled"
    settle(receipts, set(guids), partner)
    with session_scope(read_only=True) as session:
        early = session.scalars(
            select(Story.id).where(Story.guid.in_(guids), Story.published_at < when)
        ).all()
        published = session.execute(
            select(Revision.story_id).join(Story).where(Story.guid.in_(guids), Revision.action == "published")
        ).all()
    assert early == []
    assert len(published) == len(guids)
    partner.close()


def cluster_token(role: str) -> dict[str, str]:
    from shared.auth import create_token

    with session_scope() as session:
        token = create_token(session, role=role, name=f"{role}-{secrets.token_hex(3)}")
    return {"Authorization": f"Bearer {token}"}
