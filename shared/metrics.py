"""Prometheus metrics, counted in the database and Redis that every process shares.

Workers, the scheduler and the API are separate processes; counting in the
database they share gives one true number without a multiprocess registry.
Those counts (GROUP BY over receipts, stories and deliveries) grow with the
tables, so a scrape does not run them: it reads a snapshot kept in Redis, and
when the snapshot is older than ``NEWSROOM_METRICS_REFRESH`` seconds one
process (the one that takes the refresh lock) recomputes it while the others
keep answering with the one they have. A scrape costs one Redis read however
large the tables are; the counting runs at most once per interval for the
whole cluster. Counting at the events instead (counters kept beside each status
change) would add a write to hot rows in every ingest and delivery
transaction, and would have to follow every bulk UPDATE; a snapshot stays
exact to within the interval, and after Redis is wiped it is simply rebuilt
from the database, the source of truth.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.config import get_settings
from shared.db import session_scope
from shared.models import Delivery, Feed, Partner, Receipt, Source, Story

log = logging.getLogger(__name__)

QUEUES = ("ingest", "publish", "syndicate")
LATENCY_KEY = "newsroom:metrics:publish_to_feed"
SNAPSHOT_KEY = "newsroom:metrics:snapshot"
REFRESH_LOCK = "newsroom:metrics:refresh"
# How long a refresh may take before another process may try (the lock's expiry).
REFRESH_TIMEOUT = 120
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


def database_counts() -> dict[str, Any]:
    """The counts that come from the database (the costly part: GROUP BY over growing tables)."""
    counts: dict[str, Any] = {"received": [], "stories": [], "renders": [], "deliveries": []}
    with session_scope(read_only=True) as session:
        for source, fmt, status, count, total in session.execute(
            select(Source.name, Receipt.format, Receipt.status, func.count(), func.sum(Receipt.item_count))
            .join(Source, Source.id == Receipt.source_id)
            .group_by(Source.name, Receipt.format, Receipt.status)
        ):  # fmt: skip
            counts["received"].append([source, fmt or "unknown", status, count, total or 0])
        for status, count in session.execute(select(Story.status, func.count()).group_by(Story.status)):
            counts["stories"].append([status, count])
        for key, count in session.execute(select(Feed.key, Feed.renders)):
            counts["renders"].append([key, count])
        for partner, status, count in session.execute(
            select(Partner.name, Delivery.status, func.count())
            .join(Partner, Partner.id == Delivery.partner_id)
            .group_by(Partner.name, Delivery.status)
        ):  # fmt: skip
            counts["deliveries"].append([partner, status, count])
    return counts


def snapshot() -> dict[str, Any]:
    """The database's counts as of at most ``NEWSROOM_METRICS_REFRESH`` seconds ago (see the module)."""
    from shared.redis import get_redis

    refresh = get_settings().metrics_refresh
    try:
        redis = get_redis()
        raw = redis.get(SNAPSHOT_KEY)
    except Exception as error:
        log.warning("metrics: redis unavailable, counting in the database: %s", error)
        return {"at": time.time(), **database_counts()}
    current: dict[str, Any] | None = json.loads(raw) if raw else None
    if current is not None and time.time() - current["at"] < refresh:
        return current
    holder = secrets.token_hex(8)
    if redis.set(REFRESH_LOCK, holder, nx=True, ex=REFRESH_TIMEOUT):
        try:
            fresh = {"at": time.time(), **database_counts()}
            redis.set(SNAPSHOT_KEY, json.dumps(fresh))
            return fresh
        finally:
            if _text(redis.get(REFRESH_LOCK) or b"") == holder:
                redis.delete(REFRESH_LOCK)
    if current is not None:
        return current  # another process is counting; this one is at most a little older
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # the very first snapshot: wait for the one being made
        time.sleep(0.05)
        raw = redis.get(SNAPSHOT_KEY)
        if raw:
            first: dict[str, Any] = json.loads(raw)
            return first
    return {"at": time.time(), **database_counts()}


class NewsroomCollector(Collector):
    """Counters and gauges of the whole pipeline."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        received = CounterMetricFamily("newsroom_items_received", "Wire posts received",
                                       labels=["source", "format", "status"])  # fmt: skip
        items = CounterMetricFamily("newsroom_wire_items", "Wire items in accepted posts",
                                    labels=["source", "format"])  # fmt: skip
        published = GaugeMetricFamily("newsroom_stories", "Stories by status", labels=["status"])
        renders = CounterMetricFamily("newsroom_feed_renders", "Feed renders", labels=["feed"])
        deliveries = CounterMetricFamily("newsroom_deliveries", "Partner deliveries",
                                         labels=["partner", "status"])  # fmt: skip
        counts = snapshot()
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
        age = GaugeMetricFamily("newsroom_metrics_snapshot_age_seconds",
                                "How old the database counts in this scrape are")  # fmt: skip
        age.add_metric([], max(0.0, time.time() - counts["at"]))
        yield from (received, items, published, renders, deliveries, age)
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
        yield HistogramMetricFamily("newsroom_publish_to_feed_seconds",
                                    "From publish to the story being in its feeds",
                                    buckets=buckets, sum_value=raw.get("sum", 0.0))  # fmt: skip
