"""Storing rendered feeds on PostgreSQL: the server's CPU per store, by compression method.

A render round rewrites `all` in three formats, and every body over PostgreSQL's TOAST
threshold (about 2 KB) is compressed by the server at each store. This measures, in one run
and alternately, a 50-entry Atom feed rendered by the project's own renderer, stored again and
again with an upsert into a column compressed with pglz (PostgreSQL's default) and with lz4
(what migration 0006 sets on `feed_documents.body` and `pages.body`): the server process's CPU
per store (read from /proc, so the server must be on this machine), the wall time and the
stored size. The stories' text is prose of real words drawn at random from the project's own
documents, which compresses about as text does; a body repeating one paragraph would
flatter pglz.

`python -m bench storage`; BENCH_STORES (default 200) sets the stores per measurement.
Skipped without a PostgreSQL server (NEWSROOM_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import os
import random
import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STORES = int(os.environ.get("BENCH_STORES", "200"))
ROUNDS = 3
METHODS = ("pglz", "lz4")


def prose(words: list[str], rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(words) for _ in range(count))


def document() -> bytes:
    """A 50-entry Atom feed of `all`, rendered as a round renders it."""
    from services.syndicate.feeds import FeedKey, render_feed
    from shared.config import Settings
    from shared.models import Story, StoryTag

    text = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    words = re.findall(r"[^\W\d_]{2,}", text)
    rng = random.Random(2026)
    now = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    stories = [
        Story(
            id=n,
            slug=f"story-{n}",
            revision=1,
            headline=prose(words, rng, 10).capitalize(),
            lede=prose(words, rng, 30).capitalize() + ".",
            body_html="".join(f"<p>{prose(words, rng, 60).capitalize()}.</p>" for _ in range(6)),
            body_text="",
            author_name="A. Writer",
            author_slug="a-writer",
            section="World",
            language="en",
            published_at=now - timedelta(minutes=n),
            tags=[StoryTag(slug="bench", name="Bench")],
            labels=[],
        )
        for n in range(50)
    ]
    settings = Settings(site_url="https://news.example.com")
    return render_feed(FeedKey("all"), "atom", stories, settings=settings).body  # type: ignore[arg-type]


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(connection: Any, method: str, body: bytes) -> dict[str, Any]:
    """Store ``body`` STORES times into a column compressed with ``method``."""
    connection.execute("DROP TABLE IF EXISTS bench_documents")
    connection.execute(
        f"CREATE TABLE bench_documents (key text PRIMARY KEY, body bytea COMPRESSION {method})"
    )
    upsert = (
        "INSERT INTO bench_documents VALUES ('all', %s) ON CONFLICT (key) DO UPDATE SET body = excluded.body"
    )
    pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
    # Each store differs from the last, as a new round's feed does.
    bodies = [body.replace(b"<entry>", b"<entry><!-- %d -->" % n, 1) for n in range(STORES)]
    connection.execute(upsert, (bodies[0],))
    cpu, started = _server_cpu(pid), time.perf_counter()
    for each in bodies:
        connection.execute(upsert, (each,))
    cpu, wall = _server_cpu(pid) - cpu, time.perf_counter() - started
    stored = connection.execute("SELECT pg_column_size(body) FROM bench_documents").fetchone()[0]
    return {
        "server_cpu_ms_per_store": round(cpu * 1000 / STORES, 2),
        "wall_ms_per_store": round(wall * 1000 / STORES, 2),
        "stored_bytes": stored,
    }


def run() -> dict[str, Any]:
    import psycopg
    from sqlalchemy.engine import make_url

    from bench.pipeline import drop_databases, postgres_url

    url = postgres_url()
    if url is None:
        return {"skipped": "no PostgreSQL server (NEWSROOM_TEST_POSTGRES_URL)"}
    body = document()
    parts = make_url(url)
    try:
        with psycopg.connect(
            host=parts.host, port=parts.port, user=parts.username, dbname=parts.database, autocommit=True
        ) as connection:
            runs: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
            for _ in range(ROUNDS):  # alternately, so that the machine's noise falls on both
                for method in METHODS:
                    runs[method].append(measure(connection, method, body))
            connection.execute("DROP TABLE bench_documents")
    finally:
        drop_databases()
    results: dict[str, Any] = {"document_bytes": len(body), "stores": STORES, "rounds": ROUNDS}
    for method, measured in runs.items():
        cpu = [run["server_cpu_ms_per_store"] for run in measured]
        results[method] = {
            "server_cpu_ms_per_store": cpu,
            "median": statistics.median(cpu),
            "wall_ms_per_store": [run["wall_ms_per_store"] for run in measured],
            "stored_bytes": measured[0]["stored_bytes"],
        }
    results["lz4_over_pglz_cpu"] = round(results["lz4"]["median"] / max(results["pglz"]["median"], 1e-9), 2)
    return results


def table(results: dict[str, Any]) -> str:
    if "skipped" in results:
        return f"skipped: {results['skipped']}"
    rows = [
        f"A {results['document_bytes']:,}-byte Atom feed stored {results['stores']} times per run, "
        f"{results['rounds']} runs each, alternately",
        "",
        "| compression | server CPU ms per store (runs) | wall ms per store (runs) | stored bytes |",
        "| --- | --- | --- | --- |",
    ]
    for method in METHODS:
        run = results[method]
        rows.append(
            f"| {method} | {', '.join(map(str, run['server_cpu_ms_per_store']))} "
            f"| {', '.join(map(str, run['wall_ms_per_store']))} | {run['stored_bytes']:,} |"
        )
    rows.append(f"| lz4 / pglz, server CPU (medians) | {results['lz4_over_pglz_cpu']} | | |")
    return "\n".join(rows)
