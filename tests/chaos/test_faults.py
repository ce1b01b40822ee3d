"""Faults on purpose: killed workers, Redis restarts and wipes, Redis down, poison items."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.models import Failure, Receipt, Source
from shared.outbox import emit
from shared.tasknames import PROCESS_RECEIPT
from tests.helpers.chaos import ninjs, settle, setup_newsroom
from tests.helpers.cluster import Cluster
from tests.helpers.support import wait_for

pytestmark = pytest.mark.chaos


def test_worker_killed_mid_burst(cluster: Cluster) -> None:
    _worker_killed_mid_burst(cluster)


def test_worker_killed_mid_burst_on_postgresql(cluster_pg: Cluster) -> None:
    # Batches there are claimed and parsed in one transaction, not before it as on SQLite.
    _worker_killed_mid_burst(cluster_pg)


def _worker_killed_mid_burst(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    guids = [f"urn:chaos:kill:{secrets.token_hex(4)}:{i}" for i in range(300)]

    def kill_and_restart() -> None:
        cluster.stop("worker", kill=True)
        time.sleep(0.5)
        cluster.start("worker", "worker", "-c", "2")

    receipts = cluster.burst(source, token, [ninjs(g) for g in guids], during=kill_and_restart, at=100)
    facts = settle(receipts, set(guids), partner)
    assert facts["deliveries"] == 300
    partner.close()


def test_redis_restarted_then_wiped_mid_burst(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    guids = [f"urn:chaos:redis:{secrets.token_hex(4)}:{i}" for i in range(300)]

    def restart_redis() -> None:
        cluster.redis.stop()
        cluster.redis.start()  # AOF on: what was queued survives

    receipts = cluster.burst(source, token, [ninjs(g) for g in guids[:150]], during=restart_redis, at=60)

    def wipe_redis() -> None:
        cluster.redis.stop()
        cluster.redis.wipe()  # everything queued is gone: the outbox must send it again
        cluster.redis.start()

    receipts += cluster.burst(source, token, [ninjs(g) for g in guids[150:]], during=wipe_redis, at=60)
    settle(receipts, set(guids), partner)
    partner.close()


def test_posts_accepted_while_redis_is_down(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    cluster.redis.stop()
    guids = [f"urn:chaos:down:{secrets.token_hex(4)}:{i}" for i in range(50)]
    receipts = cluster.burst(source, token, [ninjs(g) for g in guids], workers=4)
    assert len(receipts) == 50  # every answer was 202 with Redis down
    with session_scope(read_only=True) as session:
        pending = session.scalars(select(Receipt.status).where(Receipt.id.in_(receipts))).all()
    assert set(pending) == {"pending"}
    cluster.redis.start()
    settle(receipts, set(guids), partner)
    partner.close()


def test_older_version_after_newer_while_both_in_flight(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    guids = [f"urn:chaos:order:{secrets.token_hex(4)}:{i}" for i in range(40)]
    items = []
    for guid in guids:
        items += [ninjs(guid, 3), ninjs(guid, 1), ninjs(guid, 2)]
    receipts = cluster.burst(source, token, items, workers=6)
    settle(receipts, set(guids), partner)
    with session_scope(read_only=True) as session:
        from shared.models import Story

        versions = dict(
            session.execute(select(Story.guid, Story.wire_version).where(Story.guid.in_(guids))).all()
        )
    assert set(versions.values()) == {3}
    partner.close()


def test_poison_task_is_capped_and_the_rest_flows(cluster: Cluster) -> None:
    source, token, partner, _ = setup_newsroom()
    with session_scope() as session:
        source_id = session.scalars(select(Source.id).where(Source.name == source)).one()
        # Stored posts whose format no parser knows: their task fails every time. One is
        # queued as the API queues posts (gathered, so it fails inside a batch first), one
        # on its own.
        poisons = [
            Receipt(
                source_id=source_id,
                content_type="application/x-poison",
                format="poison",
                body=b"\x00poison",
                size=7,
            )
            for _ in range(2)
        ]
        session.add_all(poisons)
        session.flush()
        emit(session, PROCESS_RECEIPT, {"receipt_id": poisons[0].id}, batch=True)
        emit(session, PROCESS_RECEIPT, {"receipt_id": poisons[1].id})
        poison_ids = [poison.id for poison in poisons]
    guids = [f"urn:chaos:poison:{secrets.token_hex(4)}:{i}" for i in range(30)]
    receipts = cluster.burst(source, token, [ninjs(g) for g in guids], workers=4)
    settle(receipts, set(guids), partner)

    keys = [f"receipt_id={poison_id}" for poison_id in poison_ids]

    def recorded() -> list[Failure]:
        with session_scope(read_only=True) as session:
            failures = list(session.scalars(select(Failure).where(Failure.key.in_(keys))))
        return failures if {failure.key for failure in failures} == set(keys) else []

    failures = wait_for(recorded, timeout=60, what="both poison receipts recorded as failed")
    assert sorted(failure.key for failure in failures) == sorted(keys)  # once each
    with session_scope(read_only=True) as session:
        for poison_id in poison_ids:
            assert session.get(Receipt, poison_id).body == b"\x00poison"  # type: ignore[union-attr]
    partner.close()
