"""Nothing anonymous is expensive: body limits and authentication before reading, /metrics behind a
token and at constant cost, rate limits shared through Redis, security headers on every answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import select
import socket
import subprocess
import sys
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import delete as sql_delete
from sqlalchemy import event, func, insert, update
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine

from services.app import create_app
from shared.db import session_scope
from shared.models import Receipt, Source
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ROOT, free_port, newsroom_environment, wait_for

pytestmark = pytest.mark.pipeline

LIMIT = 5 * 1024 * 1024  # the default NEWSROOM_MAX_BODY_BYTES
HOSTILE = 64 * 1024 * 1024
CHUNK = 64 * 1024
SECURITY = ("x-content-type-options", "referrer-policy", "x-frame-options", "content-security-policy")


# --- a real server on loopback, and a client that sends a body without waiting to be asked ----------


@contextmanager
def api_server(pipeline: Pipeline, **env: str) -> Iterator[str]:
    """`newsroom api` (uvicorn, proxy headers on) on a free loopback port, with these settings."""
    port = free_port()
    log = pipeline.data_dir / f"api-{port}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "api", "--port", str(port)],
            env={**os.environ, **pipeline.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        wait_for(up, timeout=60, what="newsroom api")
        assert process.poll() is None, log.read_text(errors="replace")[-2000:]
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def send_large(
    base: str,
    method: str,
    path: str,
    total: int,
    *,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, dict[str, str], int]:
    """Send ``total`` bytes of body as fast as the server takes them, reading the answer as soon as
    it comes: (status, headers, how many body bytes the server had taken by then)."""
    host, port = base.removeprefix("http://").split(":")
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}",
    ]
    piece = b"{" + b"x" * (CHUNK - 1)
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.setblocking(False)
        sent, answer, pending = 0, b"", b""
        while b"\r\n\r\n" not in answer:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 30)
            assert readable or writable, "the server neither answered nor read"
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                continue
            pending = pending or frame
            if chunked and sent >= total - len(frame) and pending == frame:
                pending += b"0\r\n\r\n"  # the last frame, then the end of the body
            try:
                taken = sock.send(pending)
            except OSError:
                break  # the server closed the connection: its answer is waiting to be read
            pending = pending[taken:]
            sent += taken
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = {name.lower(): value for name, value in (line.split(": ", 1) for line in head[1:])}
    return int(head[0].split()[1]), fields, sent


@pytest.fixture(scope="module")
def server(pipeline: Pipeline) -> Iterator[str]:
    with api_server(pipeline, NEWSROOM_RATE_PUBLIC="5/minute", NEWSROOM_RATE_WIRE="3/minute") as base:
        yield base


# --- bodies: refused before they are read, authentication before parsing ----------------------------


@pytest.mark.parametrize("path", ["/v1/stories/1", "/v1/stories/1/publish", "/v1/stories/1/unpublish"])
def test_an_anonymous_64_mb_body_is_refused_before_it_is_read(server: str, path: str) -> None:
    method = "PATCH" if path == "/v1/stories/1" else "POST"
    status, fields, sent = send_large(server, method, path, HOSTILE)
    assert status == 413
    # The answer came while the client had sent a fraction (socket buffers) of the 64 MB.
    assert sent < HOSTILE // 4, sent
    for name in SECURITY:
        assert name in fields


@pytest.mark.parametrize("path", ["/v1/stories/1", "/v1/stories/1/publish", "/v1/wire/anything"])
def test_an_anonymous_streamed_body_is_refused_before_it_is_read(server: str, path: str) -> None:
    method = "PATCH" if path == "/v1/stories/1" else "POST"
    status, fields, sent = send_large(server, method, path, HOSTILE, chunked=True)
    assert status == 401
    assert fields["www-authenticate"] == "Bearer"
    assert sent < HOSTILE // 4, sent


def test_an_anonymous_oversized_wire_post_is_401_unread(server: str) -> None:
    status, _, sent = send_large(server, "POST", "/v1/wire/anything", HOSTILE)
    assert status == 401
    assert sent < HOSTILE // 4, sent


def test_a_streamed_body_is_cut_off_at_the_limit(pipeline: Pipeline, server: str) -> None:
    editor = pipeline.token("editor")
    status, _, sent = send_large(server, "PATCH", "/v1/stories/1", HOSTILE, headers=editor, chunked=True)
    assert status == 413
    assert LIMIT < sent < HOSTILE // 4, sent


class EndlessBody:
    """An ASGI receive channel that never runs out of body, counting what was taken from it."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        self.pulled += CHUNK
        return {"type": "http.request", "body": b"{" * CHUNK, "more_body": True}


def call(app: Any, method: str, path: str, headers: dict[str, str], receive: Any) -> tuple[int, bytes]:
    """One request straight into the ASGI app: (status, body)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("192.0.2.1", 1),
        "server": ("test", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
        "app": app,
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("authorization", [None, "Bearer nr_editor_not-a-token", "Basic Zm9vOmJhcg=="])
def test_no_body_is_read_before_the_caller_is_known(pipeline: Pipeline, authorization: str | None) -> None:
    headers = {"content-type": "application/json", "transfer-encoding": "chunked"}
    if authorization:
        headers["authorization"] = authorization
    for method, path in (
        ("PATCH", "/v1/stories/1"),
        ("POST", "/v1/stories/1/publish"),
        ("POST", "/v1/stories/1/unpublish"),
        ("POST", "/v1/wire/any"),
    ):
        receive = EndlessBody()
        status, body = call(create_app(), method, path, headers, receive)
        assert status == 401, body
        assert json.loads(body)["error"] == "unauthorized"
        assert receive.pulled == 0


def test_authentication_comes_before_parsing(pipeline: Pipeline) -> None:
    client = pipeline.client
    bad = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    for method, path in (
        ("PATCH", "/v1/stories/1"),
        ("POST", "/v1/stories/1/publish"),
        ("POST", "/v1/stories/1/unpublish"),
    ):
        assert client.request(method, path, **bad).status_code == 401  # was 422: parsed first
        editor = {**bad["headers"], **pipeline.token("editor")}
        answer = client.request(method, path, content=bad["content"], headers=editor)
        assert answer.status_code == 422, answer.text  # with a token, the body is parsed as before
        wire = {**bad["headers"], **pipeline.source()[1]}
        assert client.request(method, path, content=bad["content"], headers=wire).status_code in (403, 422)


# --- /metrics: a token, and the same cost however large the tables ----------------------------------


def test_metrics_takes_an_admin_or_the_metrics_token(pipeline: Pipeline) -> None:
    secret = secrets.token_urlsafe(16)
    with newsroom_environment({"NEWSROOM_METRICS_TOKEN": secret}):
        client = TestClient(create_app())
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers=pipeline.token("editor")).status_code == 403
        assert client.get("/metrics", headers=pipeline.source()[1]).status_code == 403
        assert client.get("/metrics", headers=pipeline.token("admin")).status_code == 200
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 200
        assert "newsroom_items_received_total" in answer.text
    # Without NEWSROOM_METRICS_TOKEN only admins read it.
    client = TestClient(create_app())
    assert client.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert client.get("/metrics", headers=pipeline.token("admin")).status_code == 200


GROWING_TABLES = re.compile(r"\b(receipts|stories|deliveries)\b", re.IGNORECASE)


def test_a_scrape_costs_the_same_however_many_receipts(pipeline: Pipeline) -> None:
    name, _ = pipeline.source()
    secret = secrets.token_urlsafe(16)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def scrape(client: TestClient) -> dict[str, float]:
        """This source's received counters by status, and the SQL that the scrape ran."""
        statements.clear()
        event.listen(Engine, "before_cursor_execute", record)
        try:
            answer = client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
        finally:
            event.remove(Engine, "before_cursor_execute", record)
        assert answer.status_code == 200
        labels = f'format="ninjs",source="{re.escape(name)}",status="(\\w+)"'
        pattern = rf"newsroom_items_received_total{{{labels}}} (\S+)"
        return {status: float(value) for status, value in re.findall(pattern, answer.text)}

    with newsroom_environment({"NEWSROOM_METRICS_TOKEN": secret}):
        clients = [TestClient(create_app()), TestClient(create_app())]  # two API processes
        assert scrape(clients[0]) == {}
        with session_scope() as session:
            source_id = session.scalars(sql_select(Source.id).where(Source.name == name)).one()
            row = {
                "source_id": source_id,
                "format": "ninjs",
                "status": "done",
                "body": b"{}",
                "size": 2,
                "item_count": 1,
            }
            session.execute(insert(Receipt), [row] * 20_000)
        assert scrape(clients[1]) == {"done": 20_000}
        folding = list(statements)
        for n in range(10):
            assert scrape(clients[n % 2]) == {"done": 20_000}
            # The same few statements with 20,000 more receipts, none of them over a growing table.
            assert len(statements) <= len(folding)
            assert not [s for s in statements if GROWING_TABLES.search(s)], statements
        assert not [s for s in folding if GROWING_TABLES.search(s)], folding
        # A bulk UPDATE is counted (the triggers follow every statement); a delete is not uncounted.
        with session_scope() as session:
            ids = session.scalars(sql_select(Receipt.id).where(Receipt.source_id == source_id).limit(5)).all()
            session.execute(update(Receipt).where(Receipt.id.in_(ids[:3])).values(status="rejected"))
            session.execute(sql_delete(Receipt).where(Receipt.id.in_(ids[3:])))
        assert scrape(clients[0]) == {"done": 19_997, "rejected": 3}
        with session_scope(read_only=True) as session:
            truth = {
                status: count
                for status, count in session.execute(
                    sql_select(Receipt.status, func.count())
                    .where(Receipt.source_id == source_id)
                    .group_by(Receipt.status)
                )
            }
        assert truth == {"done": 19_995, "rejected": 3}  # the two deleted ones stay counted as received


def unique_address() -> str:
    """A client address no other test (nor the other database's run, within the minute) uses."""
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


# --- rate limits ---------------------------------------------------------------------------------


def test_public_pages_and_feeds_are_limited_per_address(server: str) -> None:
    forwarded = {"X-Forwarded-For": unique_address()}
    with httpx.Client(base_url=server, timeout=10) as http:
        paths = ["/feeds/all.atom", "/feeds/all.atom", "/feeds/all.atom", "/", "/sitemaps/news.xml"]
        for path in paths:
            assert http.get(path, headers=forwarded).status_code != 429, path
        for path in ("/feeds/all.atom", "/", "/stories/anything", "/tags/x"):
            refused = http.get(path, headers=forwarded)
            assert refused.status_code == 429, path
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert "try again" in refused.text
            for name in SECURITY:
                assert name in refused.headers
        # Another address is not affected, nor are the health checks.
        assert http.get("/feeds/all.atom", headers={"X-Forwarded-For": unique_address()}).status_code == 200
        assert http.get("/healthz", headers=forwarded).status_code == 200


def test_the_limit_is_shared_by_every_api_process(pipeline: Pipeline, server: str) -> None:
    forwarded = {"X-Forwarded-For": unique_address()}
    with api_server(pipeline, NEWSROOM_RATE_PUBLIC="5/minute") as other:
        statuses = [
            httpx.get(f"{base}/feeds/all.atom", headers=forwarded).status_code
            for base in (server, other, server, other, server, other, server)
        ]
    assert statuses[:5] == [200] * 5, statuses
    assert statuses[5:] == [429, 429], statuses


def test_wire_posts_are_limited_per_token(pipeline: Pipeline, server: str) -> None:
    name, wire = pipeline.source()
    other_name, other_wire = pipeline.source()
    item = {
        "uri": "urn:limits:1",
        "headlines": [{"role": "main", "value": "Limited"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Body.</p>"}],
    }
    headers = {**wire, "Content-Type": "application/ninjs+json"}
    with httpx.Client(base_url=server, timeout=10) as http:
        for _ in range(3):
            assert http.post(f"/v1/wire/{name}", json=item, headers=headers).status_code == 202
        refused = http.post(f"/v1/wire/{name}", json=item, headers=headers)
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        other = http.post(
            f"/v1/wire/{other_name}",
            json=item,
            headers={**other_wire, "Content-Type": "application/ninjs+json"},
        )
        assert other.status_code == 202


# --- security headers on every kind of answer --------------------------------------------------------


def test_every_answer_carries_the_security_headers(pipeline: Pipeline) -> None:
    editor = pipeline.token("editor")
    with newsroom_environment({"NEWSROOM_RATE_PUBLIC": "8/minute", "NEWSROOM_MAX_BODY_BYTES": "1000"}):
        app = create_app()

        @app.get("/v1/boom", include_in_schema=False)
        def boom() -> None:
            raise RuntimeError("a bug")

        client = TestClient(app, raise_server_exceptions=False, client=(unique_address(), 1234))
        feed = client.get("/feeds/all.atom")
        answers = {
            "page": client.get("/"),
            "feed": feed,
            "feed again (from memory)": client.get("/feeds/all.atom"),
            "304": client.get("/feeds/all.atom", headers={"If-None-Match": feed.headers["etag"]}),
            "404": client.get("/stories/no-such-story"),
            "api 404": client.get("/v1/stories/999999999", headers=editor),
            "401": client.get("/v1/stories"),
            "413": client.post("/v1/stories/1/publish", content=b"x" * 2000, headers=editor),
            "422": client.post("/v1/stories/1/publish", json={"nope": 1}, headers=editor),
            "500": client.get("/v1/boom"),
            "docs": client.get("/docs"),
            "openapi": client.get("/openapi.json"),
            "json": client.get("/healthz"),
        }
        while (limited := client.get("/")).status_code != 429:
            pass
        answers["429"] = limited
    expected = {
        "feed": 200,
        "304": 304,
        "404": 404,
        "api 404": 404,
        "401": 401,
        "413": 413,
        "422": 422,
        "500": 500,
        "docs": 200,
        "page": 200,
        "429": 429,
    }
    for kind, answer in answers.items():
        if kind in expected:
            assert answer.status_code == expected[kind], (kind, answer.text)
        assert answer.headers["x-content-type-options"] == "nosniff", kind
        assert answer.headers["referrer-policy"] == "strict-origin-when-cross-origin", kind
        assert answer.headers["x-frame-options"] == "DENY", kind
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], kind
    assert answers["413"].json()["error"] == "too_large"
    # The Swagger page works under its own policy: its inline script is admitted by its hash.
    docs = answers["docs"]
    script = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert script
    digest = b64encode(hashlib.sha256(script[-1].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in docs.headers["content-security-policy"]
    assert (
        "'unsafe-inline'" not in docs.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    )


def test_the_api_docs_can_be_turned_off(pipeline: Pipeline) -> None:
    with newsroom_environment({"NEWSROOM_API_DOCS": "false"}):
        client = TestClient(create_app())
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_processes_take_hits_in_batches_and_never_pass_the_limit(redis_url: str) -> None:
    from shared.guards import RateLimits

    who = unique_address()
    with newsroom_environment({"NEWSROOM_REDIS_URL": redis_url}):
        processes = [RateLimits(), RateLimits()]

        async def hits() -> list[int | None]:
            # 300 requests, taking turns between the two processes; the limit is 200 (batches of 2).
            return [await processes[n % 2].check("public", who, "200/minute") for n in range(300)]

        answers = asyncio.run(hits())
        allowed = answers.count(None)
        assert 196 <= allowed <= 200, allowed  # never more; at most a batch per process less
        assert answers[-1] is not None and 1 <= answers[-1] <= 60
        counter = [key for key in redis_lib.Redis.from_url(redis_url).scan_iter(f"newsroom:rate*{who}*")]
        assert counter, "the count is kept in Redis"


def test_rate_limits_let_requests_through_when_redis_is_down() -> None:
    from shared.guards import RateLimits

    with newsroom_environment({"NEWSROOM_REDIS_URL": "redis://127.0.0.1:1/0"}):
        limits = RateLimits()

        async def hits() -> list[int | None]:
            return [await limits.check("public", "192.0.2.1", "1/minute") for _ in range(5)]

        assert asyncio.run(hits()) == [None] * 5


def test_requests_that_find_the_batch_spent_together_take_one_new_batch(redis_url: str) -> None:
    from shared.guards import RateLimits

    who = unique_address()
    with newsroom_environment({"NEWSROOM_REDIS_URL": redis_url}):
        limits = RateLimits()

        async def together() -> list[int | None]:
            return list(
                await asyncio.gather(*(limits.check("public", who, "100000/minute") for _ in range(50)))
            )

        assert asyncio.run(together()) == [None] * 50
    counters = redis_lib.Redis.from_url(redis_url)
    [key] = list(counters.scan_iter(f"newsroom:rate*{who}*"))
    assert counters.get(key) == b"1000"  # one batch (a hundredth of the limit), not one per request


def test_a_batch_taken_in_the_windows_last_second_ends_with_the_window(redis_url: str) -> None:
    """Redis's TTL is in whole seconds (0 under half a second): such a window is not over yet."""
    from limits import parse

    from shared.guards import RateLimits

    who = unique_address()
    rate = "100000/minute"  # batches of 1000
    counters = redis_lib.Redis.from_url(redis_url)
    key = "newsroom:rate:" + parse(rate).key_for("public", who)
    counters.set(key, 1000, px=400)  # a window in its last half second (TTL 0), one batch used
    with newsroom_environment({"NEWSROOM_REDIS_URL": redis_url}):
        limits = RateLimits()

        async def hits() -> list[int | None]:
            return [await limits.check("public", who, rate) for _ in range(3000)]

        answers = asyncio.run(hits())
    assert answers == [None] * 3000, f"refused from hit {answers.index(next(a for a in answers if a))}"
    # Three batches at most in either window, not one per request.
    assert int(counters.get(key) or 0) <= 4000
