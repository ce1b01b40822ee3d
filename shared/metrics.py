"""Prometheus metrics, read from the database and Redis at scrape time.

Workers, the scheduler and the API are separate processes; counting in the
database they share gives one true number without a multiprocess registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Delivery, Feed, Partner, Receipt, Source, Story
from shared.tasknames import QUEUES

log = logging.getLogger(__name__)

LATENCY_KEY = "newsroom:metrics:publish_to_feed"
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
        with session_scope(read_only=True) as session:
            for source, fmt, status, count, total in session.execute(
                select(Source.name, Receipt.format, Receipt.status, func.count(),
                       func.sum(Receipt.item_count))
                .join(Source, Source.id == Receipt.source_id)
                .group_by(Source.name, Receipt.format, Receipt.status)
            ):  # fmt: skip
                received.add_metric([source, fmt or "unknown", status], count)
                if status != "rejected":
                    items.add_metric([source, fmt or "unknown"], total or 0)
            for status, count in session.execute(select(Story.status, func.count()).group_by(Story.status)):
                published.add_metric([status], count)
            for key, count in session.execute(select(Feed.key, Feed.renders)):
                renders.add_metric([key], count)
            for partner, status, count in session.execute(
                select(Partner.name, Delivery.status, func.count())
                .join(Partner, Partner.id == Delivery.partner_id)
                .group_by(Partner.name, Delivery.status)
            ):  # fmt: skip
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
        yield HistogramMetricFamily("newsroom_publish_to_feed_seconds",
                                    "From publish to the story being in its feeds",
                                    buckets=buckets, sum_value=raw.get("sum", 0.0))  # fmt: skip
