"""Outbound HTTP that must not hold a worker: partner pushes and hub pings.

A worker process runs a small asyncio loop on a daemon thread. A task claims its work
in the database, hands the HTTP call to this loop and returns at once, so a partner or
hub that hangs ties up a socket, not a worker slot, and never delays a feed or another
partner. The work's state lives in the database (a delivery's lease), so an attempt lost
with its process is tried again by the scheduler's sweep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Awaitable, Callable

import httpx

from shared.egress import async_client

log = logging.getLogger(__name__)

# Many partners may hang at once; each holds one connection until its timeout.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30)


class Outbound:
    """One event loop thread and one HTTP client for this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="newsroom-outbound", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _client_in_loop(self) -> httpx.AsyncClient:
        if self._client is None:
            # Only to permitted addresses, checked at every connection (shared.egress).
            self._client = async_client(limits=LIMITS, follow_redirects=False)
        return self._client

    def submit(self, job: Callable[[httpx.AsyncClient], Awaitable[None]], *, what: str) -> None:
        """Run ``job(client)`` on the loop; failures are logged with ``what``."""

        async def run() -> None:
            await job(self._client_in_loop())

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        with self._lock:
            self._pending.add(future)

        def done(finished: concurrent.futures.Future[None]) -> None:
            with self._lock:
                self._pending.discard(finished)
            if not finished.cancelled() and (error := finished.exception()) is not None:
                log.error("%s failed: %r", what, error, exc_info=error)

        future.add_done_callback(done)

    def in_flight(self) -> int:
        """How many jobs have not finished."""
        with self._lock:
            return len(self._pending)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for running jobs; return how many are left."""
        with self._lock:
            pending = list(self._pending)
        if pending:
            concurrent.futures.wait(pending, timeout=timeout)
        return self.in_flight()


_outbound: Outbound | None = None
_outbound_lock = threading.Lock()


def get_outbound() -> Outbound:
    """This process's outbound loop, started on first use (and again after a fork)."""
    global _outbound
    with _outbound_lock:
        if _outbound is None or _outbound.pid != os.getpid():
            _outbound = Outbound()
        return _outbound


def drain_outbound(timeout: float) -> int:
    """Let running jobs finish before the process exits; return how many did not."""
    outbound = _outbound
    if outbound is None or outbound.pid != os.getpid():
        return 0
    left = outbound.drain(timeout)
    if left:
        log.warning("%d outbound requests still running at exit; their leases will expire", left)
    return left
