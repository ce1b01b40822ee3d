"""The baseline: an empty three-hop Celery chain on the same Redis, the same worker settings."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench-chain", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": 3600},
)


@app.task(name="bench.hop1")
def hop1(token: str) -> None:
    """First hop: passes the token on."""
    hop2.delay(token)


@app.task(name="bench.hop2")
def hop2(token: str) -> None:
    """Second hop."""
    hop3.delay(token)


@app.task(name="bench.hop3")
def hop3(token: str) -> None:
    """Last hop: tells the benchmark the chain is done."""
    import redis

    redis.Redis.from_url(app.conf.broker_url).rpush("bench:done", token)
