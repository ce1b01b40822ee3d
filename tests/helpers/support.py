"""The tests' common helpers: waiting, real Redis and PostgreSQL for a run, a partner on loopback."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis as redis_lib
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from referencing import Registry, Resource
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.db import dispose_engines

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data"
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# The tests and benchmarks post and poll hundreds of times a second from one address and token.
GENEROUS_LIMITS = {
    "NEWSROOM_RATE_PUBLIC": "10000000/minute",
    "NEWSROOM_RATE_WIRE": "10000000/minute",
}

CLAIM_KEY = "newsroom:test-run"


def empty_redis(url: str) -> None:
    """Delete every key but the run's claim on the database."""
    client = redis_lib.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            if key != CLAIM_KEY.encode():
                client.delete(key)
    finally:
        client.close()


def claim_redis_database(host: str = "127.0.0.1", port: int = 6379) -> str | None:
    """A database index of the local Redis that no other test run holds (runs may overlap)."""
    for index in range(15, 0, -1):
        client = redis_lib.Redis(host=host, port=port, db=index, socket_connect_timeout=1)
        try:
            if client.set(CLAIM_KEY, os.getpid(), nx=True, ex=6 * 3600):
                url = f"redis://{host}:{port}/{index}"
                empty_redis(url)
                return url
        except redis_lib.RedisError:
            return None
        finally:
            client.close()
    return None


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_database(owner: str | None = None) -> Iterator[str]:
    """A PostgreSQL database of its own (created, then dropped); skipped, or failed, without a server.

    With ``owner``, that role (made if missing) owns the database, as an operator's would.
    """
    base = os.environ.get("NEWSROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"newsroom_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            if owner and not connection.scalar(
                text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": owner}
            ):
                connection.execute(text(f'CREATE ROLE "{owner}" LOGIN'))
            connection.execute(text(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else "")))
    except Exception as error:
        admin.dispose()
        reason = f"PostgreSQL is not reachable at {make_url(base).render_as_string()}: {error!s:.200}"
        if os.environ.get("NEWSROOM_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (NEWSROOM_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# What the tests' environments let outbound requests reach: their loopback servers.
LOOPBACK_ALLOW = "127.0.0.1/32"


@dataclass
class Reply:
    """How the partner answers one request: a status, headers, a delay or a gate to wait on."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    gate: threading.Event | None = None
    body: bytes = b""


@dataclass
class Push:
    """One request the partner received."""

    headers: dict[str, str]
    body: str
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class PartnerServer:
    """Answers with the queued replies in order, then with ``default``; listens on ``host``."""

    def __init__(self, default: Reply | None = None, *, host: str = "127.0.0.1") -> None:
        self.default = default or Reply()
        self.replies: deque[Reply] = deque()
        self.pushes: list[Push] = []
        self.lock = threading.Lock()
        partner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length).decode()
                with partner.lock:
                    partner.pushes.append(
                        Push({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    reply = partner.replies.popleft() if partner.replies else partner.default
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.gate is not None:
                    reply.gate.wait(60)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ninjs_validator() -> Any:
    """A validator for the official ninjs 2.2 schema, with GeoJSON served from the local copy."""
    schemas = DATA / "ninjs"
    schema = json.loads((schemas / "ninjs-schema_2.2.json").read_text(encoding="utf-8"))
    geojson = json.loads((schemas / "GeoJSON-schema.json").read_text(encoding="utf-8"))
    registry = Registry().with_resource(
        "https://geojson.org/schema/GeoJSON.json", Resource.from_contents(geojson)
    )
    cls = validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


@contextmanager
def statements_sent(*, read_only: bool = False) -> Iterator[list[str]]:
    """The SQL this process sends meanwhile through the writers' engine (or the readers')."""
    from sqlalchemy import event

    from shared.db import get_engine

    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = get_engine(read_only=read_only)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def newsroom_environment(env: dict[str, str]) -> Iterator[None]:
    """Run with these NEWSROOM_* variables, dropping cached settings, engines and clients around it.

    Partners, polled feeds and hubs in tests are on loopback, so outbound requests may reach
    127.0.0.1 unless ``env`` says otherwise.
    """
    from shared.config import reset_settings
    from shared.db import dispose_engines
    from shared.redis import reset_redis

    def reset() -> None:
        reset_settings()
        dispose_engines()
        reset_redis()

    env = {"NEWSROOM_OUTBOUND_ALLOW": LOOPBACK_ALLOW, **env}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    reset()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset()


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False

    def handle_data(self, data: str) -> None:
        if not self.in_script:
            self.parts.append(data)


def text_of(html: str) -> str:
    """The page's visible text, unescaped, with whitespace collapsed."""
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s+", " ", " ".join(parser.parts)))


JSONFEED_VERSION = "https://jsonfeed.org/version/1.1"


def jsonfeed_errors(document: dict[str, Any]) -> list[str]:
    """Schema errors plus the 1.1 rules the schema does not state."""
    feed11 = json.loads((DATA / "jsonfeed" / "feed.json").read_text(encoding="utf-8"))
    feed1 = json.loads((DATA / "jsonfeed" / "feed-1.json").read_text(encoding="utf-8"))
    registry = Registry().with_resources(
        [
            ("https://json.schemastore.org/feed-1", Resource.from_contents(feed1)),
            ("https://json.schemastore.org/feed.json", Resource.from_contents(feed11)),
        ]
    )
    cls = validator_for(feed11)
    validator = cls(feed11, registry=registry, format_checker=cls.FORMAT_CHECKER)
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document)]
    if document.get("version") != JSONFEED_VERSION:
        errors.append("wrong version")
    ids = [item.get("id") for item in document.get("items", [])]
    if any(not isinstance(item_id, str) for item_id in ids) or len(set(ids)) != len(ids):
        errors.append(f"item ids must be unique strings: {ids}")
    return errors


def start_newsroom(log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """Start `newsroom <args>` as a child process in a process group of its own, logging to ``log``."""
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )


def stop_newsroom(process: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    """Stop a process started by ``start_newsroom`` and its group: TERM (or KILL), KILL after 30 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
