"""Prometheus metrics, counted in the database and Redis that every process shares.

Workers, the scheduler and the API are separate processes; counting in the
database they share gives one true number without a multiprocess registry.

A scrape never counts over the growing tables (receipts, stories, deliveries).
Database triggers (migration 0003) append a delta row to ``metric_deltas`` for
every insert and status change there, in the transaction that made it and
whatever statement made it (ORM, bulk UPDATE, upsert). A scrape folds the
pending deltas into ``metric_totals`` (deleting them as it reads them, so two
processes never fold one twice) and reads the totals. Its cost follows what
changed since the last scrape, and the totals are as many rows as there are
label sets, with ten receipts or ten million. Deltas are plain appends, so no
ingest or delivery transaction waits on a shared counter row. Deleting old
receipts or deliveries adds no delta: counters never go backwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.models import Feed, MetricDelta, MetricTotal, Partner, Source
from shared.tasknames import QUEUES

log = logging.getLogger(__name__)

LATENCY_KEY = "newsroom:metrics:publish_to_feed"
# At most this many deltas are folded per scrape (the rest wait for the next one).
FOLD_BATCH = 100_000
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def observe_publish_to_feed(*seconds: float) -> None:
    """Count publish-to-feed latencies into the shared histogram in Redis (one round trip)."""
    from shared.redis import get_redis

    if not seconds:
        return
    pipe = get_redis().pipeline()
    for value in seconds:
        bucket = next((str(b) for b in LATENCY_BUCKETS if value <= b), "+Inf")
        pipe.hincrby(LATENCY_KEY, bucket, 1)
    pipe.hincrbyfloat(LATENCY_KEY, "sum", sum(seconds))
    pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fold_deltas(session: Session, *, batch: int = FOLD_BATCH) -> int:
    """Fold up to ``batch`` pending deltas, oldest first, into the totals; how many were folded."""
    taken = session.execute(
        delete(MetricDelta)
        .where(MetricDelta.id.in_(select(MetricDelta.id).order_by(MetricDelta.id).limit(batch)))
        .returning(
            MetricDelta.metric,
            MetricDelta.owner_id,
            MetricDelta.label,
            MetricDelta.status,
            MetricDelta.count,
            MetricDelta.items,
        )
    ).all()
    sums: dict[tuple[str, int, str, str], list[int]] = {}
    for metric, owner_id, label, status, count, items in taken:
        total = sums.setdefault((metric, owner_id, label, status), [0, 0])
        total[0] += count
        total[1] += items
    if sums:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        rows = [
            {
                "metric": key[0],
                "owner_id": key[1],
                "label": key[2],
                "status": key[3],
                "count": count,
                "items": items,
            }
            for key, (count, items) in sorted(sums.items())
        ]
        statement = insert(MetricTotal).values(rows)
        # Sorted rows: concurrent folds lock the totals in one order.
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["metric", "owner_id", "label", "status"],
                set_={
                    "count": MetricTotal.count + statement.excluded["count"],
                    "items": MetricTotal.items + statement.excluded["items"],
                },
            )
        )
    return len(taken)


def database_counts() -> dict[str, Any]:
    """The counts kept in the database, after folding what changed since the last scrape."""
    counts: dict[str, Any] = {"received": [], "stories": [], "renders": [], "deliveries": []}
    with session_scope(read_only=True) as session:
        pending = session.scalar(select(MetricDelta.id).limit(1)) is not None
    if pending:  # a write transaction only when there is something to fold
        with session_scope() as session:
            fold_deltas(session)
    with session_scope(read_only=True) as session:
        sources = {id_: name for id_, name in session.execute(select(Source.id, Source.name))}
        partners = {id_: name for id_, name in session.execute(select(Partner.id, Partner.name))}
        for metric, owner_id, label, status, count, items in session.execute(
            select(
                MetricTotal.metric,
                MetricTotal.owner_id,
                MetricTotal.label,
                MetricTotal.status,
                MetricTotal.count,
                MetricTotal.items,
            ).order_by(MetricTotal.metric, MetricTotal.owner_id)
        ):
            if metric == "received" and owner_id in sources:
                counts["received"].append([sources[owner_id], label, status, count, items])
            elif metric == "stories":
                counts["stories"].append([status, count])
            elif metric == "deliveries" and owner_id in partners:
                counts["deliveries"].append([partners[owner_id], status, count])
        for key, count in session.execute(select(Feed.key, Feed.renders)):
            counts["renders"].append([key, count])
    return counts


class NewsroomCollector(Collector):
    """Counters and gauges of the whole pipeline."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        received = CounterMetricFamily(
            "newsroom_items_received", "Wire posts received", labels=["source", "format", "status"]
        )
        items = CounterMetricFamily(
            "newsroom_wire_items", "Wire items in accepted posts", labels=["source", "format"]
        )
        published = GaugeMetricFamily("newsroom_stories", "Stories by status", labels=["status"])
        renders = CounterMetricFamily("newsroom_feed_renders", "Feed renders", labels=["feed"])
        deliveries = CounterMetricFamily(
            "newsroom_deliveries", "Partner deliveries", labels=["partner", "status"]
        )
        counts = database_counts()
        accepted: dict[tuple[str, str], int] = {}
        for source, fmt, status, count, total in counts["received"]:
            received.add_metric([source, fmt, status], count)
            if status != "rejected":
                accepted[source, fmt] = accepted.get((source, fmt), 0) + total
        for (source, fmt), total in accepted.items():
            items.add_metric([source, fmt], total)
        for status, count in counts["stories"]:
            published.add_metric([status], count)
        for key, count in counts["renders"]:
            renders.add_metric([key], count)
        for partner, status, count in counts["deliveries"]:
            deliveries.add_metric([partner, status], count)
        yield from (received, items, published, renders, deliveries)
        yield from self._redis_metrics()

    def _redis_metrics(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        from shared.redis import get_redis

        depth = GaugeMetricFamily("newsroom_queue_depth", "Tasks waiting per queue", labels=["queue"])
        try:
            redis = get_redis()
            for queue in QUEUES:
                depth.add_metric([queue], redis.llen(queue))
            raw = {_text(k): float(v) for k, v in redis.hgetall(LATENCY_KEY).items()}
        except Exception as error:
            log.warning("metrics: redis unavailable: %s", error)
            return
        yield depth
        cumulative = 0.0
        buckets = []
        for bound in [*map(str, LATENCY_BUCKETS), "+Inf"]:
            cumulative += raw.get(bound, 0.0)
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "newsroom_publish_to_feed_seconds",
            "From publish to the story being in its feeds",
            buckets=buckets,
            sum_value=raw.get("sum", 0.0),
        )
