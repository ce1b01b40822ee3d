"""Polling sources: conditional GET against a real loopback server, and backoff for a failing one."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select, update

from services.ingest.service import (
    POLL_BACKOFF_CAP,
    claim_poll,
    fetch_poll,
    poll_backoff,
    record_poll,
)
from shared.db import session_scope
from shared.errors import SkipEvent
from shared.models import Receipt, Source, Story, utcnow
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ROOT, wait_for

pytestmark = pytest.mark.pipeline


def rss(*entries: tuple[str, str]) -> bytes:
    items = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title><description>&lt;p&gt;{title}.&lt;/p&gt;</description>"
        "<pubDate>Fri, 18 Jul 2025 18:54:00 +0300</pubDate></item>"
        for guid, title in entries
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>W</title>{items}</channel></rss>'.encode()
    )


@dataclass
class Document:
    """What the feed server answers: a body with validators, or a failure status."""

    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200


@dataclass
class Fetch:
    headers: dict[str, str]
    status: int


@dataclass
class FeedServer:
    """A wire's feed on loopback that honours If-None-Match / If-Modified-Since and logs every GET."""

    document: Document = field(default_factory=Document)
    fetches: list[Fetch] = field(default_factory=list)

    def __post_init__(self) -> None:
        feed = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                document = feed.document
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = document.status
                if status == 200 and (
                    (document.etag and headers.get("if-none-match") == document.etag)
                    or (document.last_modified and headers.get("if-modified-since") == document.last_modified)
                ):
                    status = 304
                feed.fetches.append(Fetch(headers, status))
                body = document.body if status == 200 else b""
                self.send_response(status)
                if status in (200, 304):
                    if document.etag:
                        self.send_header("ETag", document.etag)
                    if document.last_modified:
                        self.send_header("Last-Modified", document.last_modified)
                if status == 200:
                    self.send_header("Content-Type", document.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/feed.xml"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


def receipts_of(source_id: int) -> list[Receipt]:
    with session_scope(read_only=True) as session:
        rows = session.scalars(
            select(Receipt).where(Receipt.source_id == source_id).order_by(Receipt.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def stories_of(source_id: int) -> list[str]:
    with session_scope(read_only=True) as session:
        return list(
            session.scalars(select(Story.guid).where(Story.source_id == source_id).order_by(Story.guid))
        )


def source_named(name: str) -> Source:
    with session_scope(read_only=True) as session:
        source = session.scalars(select(Source).where(Source.name == name)).one()
        session.expunge(source)
        return source


def test_scheduler_polls_with_conditional_get(pipeline: Pipeline, feed: FeedServer) -> None:
    tag = secrets.token_hex(4)
    feed.document = Document(
        body=rss((f"{tag}-1", "First"), (f"{tag}-2", "Second")),
        etag='"v1"',
        last_modified="Fri, 18 Jul 2025 16:00:00 GMT",
    )
    name, _ = pipeline.source(format="rss", poll_url=feed.url, poll_every=1)
    source = source_named(name)

    wait_for(lambda: stories_of(source.id) == [f"{tag}-1", f"{tag}-2"], what="the polled stories")
    [first] = receipts_of(source.id)
    assert (first.format, first.status, first.item_count) == ("rss", "done", 2)
    assert bytes(first.body) == feed.document.body

    # Every later poll asks "anything newer than v1?"; a 304 stores nothing.
    wait_for(lambda: sum(f.status == 304 for f in feed.fetches) >= 2, timeout=30, what="two 304 answers")
    assert feed.fetches[0].headers.get("if-none-match") is None
    assert all(f.headers.get("if-none-match") == '"v1"' for f in feed.fetches[1:])
    assert all(
        f.headers.get("if-modified-since") == "Fri, 18 Jul 2025 16:00:00 GMT" for f in feed.fetches[1:]
    )
    assert [r.id for r in receipts_of(source.id)] == [first.id]
    polled = source_named(name)
    assert (polled.poll_etag, polled.poll_failures, polled.last_error) == ('"v1"', 0, None)

    # A new document: taken in through the push path, existing items unchanged.
    feed.document = Document(body=rss((f"{tag}-1", "First"), (f"{tag}-3", "Third")), etag='"v2"')
    wait_for(lambda: len(stories_of(source.id)) == 3, timeout=30, what="the new item")
    second = wait_for(
        lambda: [r for r in receipts_of(source.id)[1:] if r.status != "pending"],
        what="the second receipt processed",
    )[0]
    assert _items(second.id) == [(f"{tag}-1", "unchanged"), (f"{tag}-3", "created")]
    wait_for(lambda: source_named(name).poll_etag == '"v2"', what="the new ETag stored")
    assert source_named(name).poll_last_modified is None


def _items(receipt_id: int) -> list[tuple[str | None, str]]:
    with session_scope(read_only=True) as session:
        receipt = session.get_one(Receipt, receipt_id)
        return [(item.guid, item.outcome) for item in receipt.items]


def controlled_source(pipeline: Pipeline, url: str, every: int = 60) -> tuple[str, int, Any]:
    """A polled source due only at a time of the test's choosing, so the scheduler leaves it alone."""
    name, _ = pipeline.source(format="rss", poll_url=url, poll_every=every)
    start = utcnow() + timedelta(days=30)
    with session_scope() as session:
        session.execute(update(Source).where(Source.name == name).values(next_poll_at=start))
        source_id = session.scalars(select(Source.id).where(Source.name == name)).one()
    return name, source_id, start


def poll(source_id: int, now: Any, **fetch: Any) -> str:
    """One poll, as the task runs it, at ``now``."""
    with session_scope() as session:
        request = claim_poll(session, source_id=source_id, now=now)
    response = fetch_poll(request, **fetch)
    with session_scope() as session:
        return record_poll(session, request=request, response=response, now=now)


def test_a_failing_source_backs_off_and_is_reported(pipeline: Pipeline, feed: FeedServer) -> None:
    feed.document = Document(status=503)
    name, source_id, now = controlled_source(pipeline, feed.url, every=60)

    assert poll(source_id, now) == "failed"
    source = source_named(name)
    assert (source.poll_failures, source.last_error) == (1, "HTTP 503 Service Unavailable")
    assert source.next_poll_at == now + timedelta(seconds=120)
    # Not due again before then: a tick in between is skipped, and so is a second claim.
    with pytest.raises(SkipEvent), session_scope() as session:
        claim_poll(session, source_id=source_id, now=now + timedelta(seconds=119))

    delays = []
    for _ in range(8):
        now = source_named(name).next_poll_at
        assert poll(source_id, now) == "failed"
        delays.append(source_named(name).next_poll_at - now)
    assert [d.total_seconds() for d in delays] == [240, 480, 960, 1920, 3600, 3600, 3600, 3600]
    assert source_named(name).poll_failures == 9
    assert len(feed.fetches) == 9
    assert receipts_of(source_id) == []

    admin = pipeline.token("admin")
    failing = pipeline.client.get("/v1/sources", params={"failing": "true"}, headers=admin).json()
    [shown] = [s for s in failing if s["name"] == name]
    assert (shown["failing"], shown["poll_failures"], shown["last_error"]) == (
        True,
        9,
        "HTTP 503 Service Unavailable",
    )
    assert pipeline.client.get("/v1/sources", headers=pipeline.token("editor")).status_code == 403
    listed = subprocess.run(
        [sys.executable, "-m", "services.cli", "source", "list", "--failing"],
        env={**os.environ, **pipeline.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = [line for line in listed.stdout.splitlines() if f" {name} " in line]
    assert "FAILING x9" in line and "HTTP 503 Service Unavailable" in line

    # The wire is back: one good poll clears the record and returns to the normal pace.
    tag = secrets.token_hex(4)
    feed.document = Document(body=rss((f"{tag}-1", "Back")), etag='"back"')
    now = source_named(name).next_poll_at
    assert poll(source_id, now) == "received"
    source = source_named(name)
    assert (source.poll_failures, source.last_error, source.poll_etag) == (0, None, '"back"')
    assert source.next_poll_at == now + timedelta(seconds=60)
    assert len(receipts_of(source_id)) == 1


def test_unreachable_oversized_and_refused_documents_fail(pipeline: Pipeline, feed: FeedServer) -> None:
    closed = FeedServer()
    closed.close()  # nothing listens on its port any more
    _, source_id, now = controlled_source(pipeline, closed.url, every=10)
    assert poll(source_id, now) == "failed"
    with session_scope(read_only=True) as session:
        assert session.get_one(Source, source_id).last_error.startswith("ConnectError")  # type: ignore[union-attr]

    feed.document = Document(body=rss(("g", "Big")) * 10, etag='"big"')
    name, source_id, now = controlled_source(pipeline, feed.url, every=10)
    assert poll(source_id, now, max_bytes=100) == "failed"
    assert source_named(name).last_error == "the document is over 100 bytes"
    assert receipts_of(source_id) == []

    # A document the parser refuses is kept as a rejected receipt, once, and counts as a failure.
    feed.document = Document(body=b"<rss><channel><item>", content_type="text/xml")
    now = source_named(name).next_poll_at
    assert poll(source_id, now) == "failed"
    [refused] = receipts_of(source_id)
    assert (refused.status, refused.content_type, refused.format) == ("rejected", None, "rss")
    now = source_named(name).next_poll_at
    assert poll(source_id, now) == "failed"
    source = source_named(name)
    assert source.poll_failures == 3
    assert source.last_error is not None and source.last_error.startswith(f"receipt {refused.id}: malformed")
    assert len(receipts_of(source_id)) == 1


def test_a_server_without_validators_sending_the_same_bytes_stores_nothing_new(
    pipeline: Pipeline, feed: FeedServer
) -> None:
    tag = secrets.token_hex(4)
    feed.document = Document(body=rss((f"{tag}-1", "Same")), content_type="application/xml")
    name, source_id, now = controlled_source(pipeline, feed.url, every=30)
    assert poll(source_id, now) == "received"
    now = source_named(name).next_poll_at
    assert poll(source_id, now) == "unchanged"
    assert [f.headers.get("if-none-match") for f in feed.fetches] == [None, None]
    [receipt] = receipts_of(source_id)
    # A generic media type is read in the source's own format.
    assert (receipt.content_type, receipt.format) == (None, "rss")
    with session_scope(read_only=True) as session:
        assert (
            session.scalar(select(func.count()).select_from(Receipt).where(Receipt.source_id == source_id))
            == 1
        )


def test_backoff_is_capped() -> None:
    assert poll_backoff(60, 1) == timedelta(minutes=2)
    assert poll_backoff(5, 3) == timedelta(seconds=40)
    assert poll_backoff(60, 500) == POLL_BACKOFF_CAP == timedelta(hours=1)


def test_source_add_and_list_from_the_command_line(pipeline: Pipeline, feed: FeedServer) -> None:
    name = f"polled-{secrets.token_hex(3)}"

    def newsroom(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            cwd=ROOT,
            env={**os.environ, **pipeline.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = newsroom(
        "source", "add", name, "--format", "atom", "--poll", "ftp://example.org/x", "--every", "5"
    )
    assert added.returncode == 2 and "http(s)" in added.stderr
    added = newsroom("source", "add", name, "--format", "atom", "--poll", feed.url)
    assert added.returncode != 0 and "--poll and --every go together" in added.stderr
    feed.document = Document(status=500)
    added = newsroom(
        "source",
        "add",
        name,
        "--format",
        "atom",
        "--timezone",
        "Europe/Kyiv",
        "--poll",
        feed.url,
        "--every",
        "3600",
    )
    assert added.returncode == 0, added.stderr
    assert "wire token (shown once): nr_wire_" in added.stdout
    listed = newsroom("source", "list", "--json")
    [view] = [s for s in json.loads(listed.stdout) if s["name"] == name]
    assert (view["format"], view["timezone"], view["poll_url"], view["poll_every"]) == (
        "atom",
        "Europe/Kyiv",
        feed.url,
        3600,
    )
    # The scheduler polls a new source at once; the server fails it, and the list says so.
    wait_for(lambda: source_named(name).poll_failures == 1, what="the first poll failing")
    assert source_named(name).next_poll_at > utcnow() + timedelta(minutes=59)
    assert "FAILING x1" in newsroom("source", "list").stdout
