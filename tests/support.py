"""A partner on loopback: a real HTTP server that records pushes and answers as told; and the
visible text of a page."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
    import json
    from pathlib import Path

    from jsonschema.validators import validator_for
    from referencing import Registry, Resource

    schemas = Path(__file__).resolve().parent / "data" / "ninjs"
    schema = json.loads((schemas / "ninjs-schema_2.2.json").read_text(encoding="utf-8"))
    geojson = json.loads((schemas / "GeoJSON-schema.json").read_text(encoding="utf-8"))
    registry = Registry().with_resource("https://geojson.org/schema/GeoJSON.json",
                                        Resource.from_contents(geojson))  # fmt: skip
    cls = validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


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
