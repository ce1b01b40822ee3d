"""Heartbeats in Redis, so a health check can tell a working worker or scheduler from a hung one.

Each worker process beats from its consumer's event loop (it stops beating when the loop
stops turning), the scheduler from its loop; ``newsroom health worker|scheduler`` looks for
a fresh beat from this host, which is what a container's health check asks.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from shared.config import get_settings
from shared.redis import get_redis

log = logging.getLogger(__name__)

ROLES = ("worker", "scheduler")
KEY_PREFIX = "newsroom:heartbeat"
BEAT_EVERY = 10.0


def _key(role: str, host: str, pid: int | str) -> str:
    return f"{KEY_PREFIX}:{role}:{host}:{pid}"


def ttl(role: str) -> int:
    """Seconds a beat counts: a solo worker does not beat while a task runs, up to its time limit."""
    if role == "worker":
        return get_settings().task_time_limit + 3 * int(BEAT_EVERY)
    return 3 * int(BEAT_EVERY)


def beat(role: str) -> None:
    """Record that this process of ``role`` is alive and turning; never raises."""
    try:
        get_redis().set(_key(role, socket.gethostname(), os.getpid()), f"{time.time():.3f}", ex=ttl(role))
    except Exception as error:  # Redis away: the missing beat is the signal
        log.warning("heartbeat of %s %s not recorded: %s", role, os.getpid(), error)


def stop_beating(role: str) -> None:
    """Remove this process's beat (a clean stop is not a failure)."""
    try:
        get_redis().delete(_key(role, socket.gethostname(), os.getpid()))
    except Exception as error:  # it expires on its own
        log.info("heartbeat of %s %s not removed: %s", role, os.getpid(), error)


def beating(role: str, host: str | None = None) -> dict[str, float]:
    """Processes of ``role`` on ``host`` (default this one) with a fresh beat: pid -> seconds ago."""
    host = host or socket.gethostname()
    client = get_redis()
    keys = list(client.scan_iter(match=_key(role, host, "*"), count=1000))
    now = time.time()
    found = {}
    for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        if value is not None:
            found[key.decode().rsplit(":", 1)[1]] = now - float(value)
    return found
