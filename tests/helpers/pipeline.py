"""The running pipeline of the worker tests: its environment, an API client, and helpers to drive it."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers.support import start_newsroom, stop_newsroom, wait_for


class Pipeline:
    """The running pipeline: its environment, an API client, and helpers to drive it."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.env = env
        self.data_dir = data_dir
        from fastapi.testclient import TestClient

        from services.app import create_app

        self.client = TestClient(create_app())
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def dialect(self) -> str:
        return "postgresql" if self.env["NEWSROOM_DATABASE_URL"].startswith("postgresql") else "sqlite"

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `newsroom <args>` as a child process (its own process group), logging to a file."""
        process = self.processes[name] = start_newsroom(self.data_dir / f"{name}.log", self.env, *args)
        return process

    def stop(self, name: str, *, kill: bool = False) -> None:
        stop_newsroom(self.processes.pop(name, None), kill=kill)

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    def log_size(self, name: str) -> int:
        path = self.data_dir / f"{name}.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, name: str, offset: int) -> str:
        """What ``name`` logged after ``offset`` bytes."""
        with open(self.data_dir / f"{name}.log", "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def token(self, role: str, name: str | None = None) -> dict[str, str]:
        """Authorization headers for a fresh token of ``role``."""
        from shared.auth import create_token
        from shared.db import session_scope

        with session_scope() as session:
            token = create_token(session, role=role, name=name or f"{role}-{secrets.token_hex(3)}")
        return {"Authorization": f"Bearer {token}"}

    def source(self, **kwargs: Any) -> tuple[str, dict[str, str]]:
        """A new source and its wire token's headers."""
        from services.ingest.service import add_source
        from shared.db import session_scope

        name = kwargs.pop("name", f"wire-{secrets.token_hex(4)}")
        with session_scope() as session:
            _, token = add_source(session, name=name, **kwargs)
        return name, {"Authorization": f"Bearer {token}"}

    def wait_receipt(self, receipt: int, headers: dict[str, str], timeout: float = 20) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = self.client.get(f"/v1/receipts/{receipt}", headers=headers).json()
            return body if body["status"] != "pending" else None

        return wait_for(done, timeout=timeout, what=f"receipt {receipt}")
