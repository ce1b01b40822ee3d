"""The pipeline as separate processes on a Redis of its own, for fault tests and benchmarks."""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis as redis_lib

from shared.redis import redis_server_binary
from tests.helpers.support import (
    GENEROUS_LIMITS,
    LOOPBACK_ALLOW,
    free_port,
    start_newsroom,
    stop_newsroom,
    wait_for,
)


class OwnRedis:
    """A redis-server on a free port with AOF on, which the test may stop, restart and wipe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        client = redis_lib.Redis.from_url(self.url, socket_connect_timeout=0.5)
        wait_for(lambda: self._ping(client), timeout=15, what="redis to start")

    @staticmethod
    def _ping(client: redis_lib.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis_lib.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def wipe(self) -> None:
        for path in self.directory.glob("*"):
            if path.name != "redis.log":
                if path.is_dir():
                    for inner in path.iterdir():
                        inner.unlink()
                    path.rmdir()
                else:
                    path.unlink()


class Cluster:
    """The pipeline as separate processes, driven over real HTTP."""

    def __init__(self, directory: Path, database_url: str) -> None:
        self.directory = directory
        self.redis = OwnRedis(directory / "redis")
        self.api_port = free_port()
        self.env = {
            "NEWSROOM_DATA_DIR": str(directory),
            "NEWSROOM_DATABASE_URL": database_url,
            "NEWSROOM_REDIS_URL": self.redis.url,
            "NEWSROOM_SITE_URL": f"http://127.0.0.1:{self.api_port}",
            "NEWSROOM_OUTBOX_LEASE": "5",
            "NEWSROOM_PARTNER_TIMEOUT": "2",
            "NEWSROOM_LOG_LEVEL": "INFO",
            "NEWSROOM_OUTBOUND_ALLOW": LOOPBACK_ALLOW,
            **GENEROUS_LIMITS,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30)

    def start(self, name: str, *args: str) -> None:
        self.processes[name] = start_newsroom(self.directory / f"{name}.log", self.env, *args)

    def stop(self, name: str, *, kill: bool = False) -> None:
        stop_newsroom(self.processes.pop(name, None), kill=kill)

    def start_api(self, *, processes: int = 1) -> None:
        self.start("api", "api", "--port", str(self.api_port), "--workers", str(processes))
        wait_for(self._api_up, timeout=30, what="the api to answer")

    def _api_up(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def start_all(self, *, api_processes: int = 1, worker_processes: int = 2) -> None:
        self.redis.start()
        self.start_api(processes=api_processes)
        self.start("worker", "worker", "-c", str(worker_processes))
        self.start("scheduler", "scheduler")

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        self.redis.stop()
        self.http.close()

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    # --- driving it -----------------------------------------------------------------

    def post(self, source: str, token: str, item: dict[str, Any]) -> httpx.Response:
        return self.http.post(
            f"/v1/wire/{source}",
            content=json.dumps(item),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/ninjs+json"},
        )

    def burst(
        self,
        source: str,
        token: str,
        items: list[dict[str, Any]],
        *,
        workers: int = 8,
        during: Any = None,
        at: int | None = None,
    ) -> list[int]:
        """Post items concurrently; call ``during()`` once ``at`` posts were accepted. Returns receipts."""
        receipts: list[int] = []
        fired = False

        def one(item: dict[str, Any]) -> int:
            answer = self.post(source, token, item)
            assert answer.status_code == 202, answer.text
            return int(answer.json()["receipt"])

        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(one, item) for item in items]
            for future in futures:
                receipts.append(future.result())
                if during is not None and not fired and at is not None and len(receipts) >= at:
                    fired = True
                    during()
        return receipts
