"""The pipeline under load, beside the baseline of an empty three-hop Celery chain.

Measures, on this machine, in one run:
- the baseline chain on the same Redis (latency p50/p99, chains/s, one worker with two processes),
  and the same chain on two single-process workers, as the pipeline's workers run;
- wire post -> story visible in /feeds/all.atom: latency p50/p95/p99 at a steady rate;
- sustained throughput: N posts as fast as they are accepted, until all are published and in the feed;
- both again with an archive of stories already stored, on SQLite and PostgreSQL;
- the peak memory of each process.
Environment: BENCH_RATE (50), BENCH_SECONDS (60), BENCH_POSTS (2000), BENCH_ARCHIVE (100000),
BENCH_BACKENDS (sqlite,postgresql), BENCH_DRAIN_SECONDS (600: how long a phase waits for its posts
before the next begins), BENCH_BASELINE (on).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import redis as redis_lib
from lxml import etree

from shared.db import session_scope
from tests.helpers.cluster import Cluster, OwnRedis
from tests.helpers.support import newsroom_environment

RATE = float(os.environ.get("BENCH_RATE", "50"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "60"))
POSTS = int(os.environ.get("BENCH_POSTS", "2000"))
ARCHIVE = int(os.environ.get("BENCH_ARCHIVE", "100000"))
BACKENDS = os.environ.get("BENCH_BACKENDS", "sqlite,postgresql").split(",")
# How long a phase waits for the stories it posted before the next phase begins.
DRAIN_SECONDS = float(os.environ.get("BENCH_DRAIN_SECONDS", "600"))
# BENCH_BASELINE=off skips the empty-chain baseline (for quick comparisons of the pipeline alone).
BASELINE = os.environ.get("BENCH_BASELINE", "on") != "off"
ATOM = "{http://www.w3.org/2005/Atom}"
BODY = "".join(
    f"<p>Paragraph {i} of a realistic story, with <a href='https://example.org/{i}'>a link</a>, "
    f"<strong>emphasis</strong> and enough words to weigh about four kilobytes in all.</p>"
    for i in range(22)
)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of the values, in milliseconds rounded."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 1)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its children (a prefork worker's pool), in MB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


# --- the baseline ---------------------------------------------------------------------------


def chain_baseline(broker: str, *, chains: int = 2000, solo: bool = False) -> dict[str, Any]:
    """An empty three-hop chain on one worker with two processes: latency and rate.

    ``solo``: on two single-process workers instead, as ``newsroom worker -c 2`` runs.
    """
    env = {**os.environ, "BENCH_BROKER_URL": broker}
    client = redis_lib.Redis.from_url(broker)
    client.flushdb()
    pool = ["-P", "solo"] if solo else ["-c", "2", "-P", "prefork"]
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.chain",
        "worker",
        *pool,
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
    ]
    workers = []
    for n in range(2 if solo else 1):
        workers.append(
            subprocess.Popen(
                [*command, "-n", f"chain{n}@%h"],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    from bench.chain import app, hop1

    app.conf.broker_url = broker
    try:
        hop1.delay("warm")
        client.blpop(["bench:done"], timeout=60)
        latencies = []
        for _ in range(200):  # one at a time: latency
            token = secrets.token_hex(4)
            started = time.perf_counter()
            hop1.delay(token)
            client.blpop(["bench:done"], timeout=30)
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(chains):  # all at once: throughput
            hop1.delay(str(i))
        for _ in range(chains):
            client.blpop(["bench:done"], timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "chains_per_s": round(chains / elapsed, 1),
    }


# --- the pipeline ------------------------------------------------------------------------------


class FeedWatcher:
    """Polls /feeds/all.atom with If-None-Match and notes when each story first appears."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        etag = None
        while not self.stop.is_set():
            headers = {"If-None-Match": etag} if etag else {}
            try:
                answer = self.http.get("/feeds/all.atom", headers=headers)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            now = time.perf_counter()
            if answer.status_code == 200:
                etag = answer.headers.get("etag")
                root = etree.fromstring(answer.content)
                for entry in root.iter(f"{ATOM}entry"):
                    title = entry.findtext(f"{ATOM}title") or ""
                    self.seen.setdefault(title, now)
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def ninjs(headline: str) -> bytes:
    import json

    return json.dumps(
        {
            "uri": f"urn:bench:{headline}",
            "version": "1",
            "language": "en",
            "headlines": [{"role": "main", "value": headline}],
            "bodies": [{"role": "main", "contenttype": "text/html", "value": BODY}],
            "subjects": [{"name": "Bench"}],
        }
    ).encode()


def steady(cluster: Cluster, source: str, token: str, *, rate: float, seconds: float) -> dict[str, Any]:
    """Posts at a steady rate; latency from the post to the story in /feeds/all.atom."""
    watcher = FeedWatcher(httpx.Client(base_url=cluster.http.base_url, timeout=30))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/ninjs+json"}
    # Warm up first (connections, caches, the first renders), as a running newsroom is.
    warm = [f"Warm-up {i} {secrets.token_hex(3)}" for i in range(20)]
    for headline in warm:
        cluster.http.post(f"/v1/wire/{source}", content=ninjs(headline), headers=headers).raise_for_status()
        time.sleep(1 / rate)
    deadline = time.perf_counter() + 30
    while not all(h in watcher.seen for h in warm) and time.perf_counter() < deadline:
        time.sleep(0.05)
    sent: dict[str, float] = {}
    total = int(rate * seconds)
    started = time.perf_counter()

    def post(i: int) -> None:
        headline = f"Steady {i} {secrets.token_hex(3)}"
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[headline] = time.perf_counter()
        answer = cluster.http.post(f"/v1/wire/{source}", content=ninjs(headline), headers=headers)
        answer.raise_for_status()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, range(total)))
    # Every post is waited for (a backlog would spill into the next measurement), up to a limit.
    deadline = time.perf_counter() + DRAIN_SECONDS
    while len([h for h in sent if h in watcher.seen]) < total and time.perf_counter() < deadline:
        time.sleep(0.05)
    watcher.close()
    wait_until_all_published(deadline)
    latencies = [watcher.seen[h] - t for h, t in sent.items() if h in watcher.seen]
    return {
        "posts": total,
        "rate_per_s": rate,
        "in_feed": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
    }


def wait_until_all_published(deadline: float) -> None:
    """Wait until no story is left half-way (every receipt done and every story published)."""
    from sqlalchemy import func, select

    from shared.models import Receipt, Story

    while time.perf_counter() < deadline:
        with session_scope(read_only=True) as session:
            pending = session.scalar(select(func.count(Receipt.id)).where(Receipt.status == "pending"))
            ingested = session.scalar(select(func.count(Story.id)).where(Story.status == "ingested"))
        if not pending and not ingested:
            return
        time.sleep(0.2)


def sustained(cluster: Cluster, source: str, token: str, *, posts: int) -> dict[str, Any]:
    """Posts as fast as they are accepted; time until every story is published and in the feed."""
    from sqlalchemy import func, select

    from shared.models import Story

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/ninjs+json"}
    prefix = f"Sustained {secrets.token_hex(3)}"
    # Only the stories of this phase are counted (a count over an archive is a scan on PostgreSQL,
    # and polling it would load the database the pipeline is measured on).
    with session_scope(read_only=True) as session:
        last_before = session.scalar(select(func.max(Story.id))) or 0
    started = time.perf_counter()

    def post(i: int) -> None:
        answer = cluster.http.post(f"/v1/wire/{source}", content=ninjs(f"{prefix} {i}"), headers=headers)
        answer.raise_for_status()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, range(posts)))
    accepted = time.perf_counter() - started
    last = f"{prefix} {posts - 1}"
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        with session_scope(read_only=True) as session:
            published = (
                session.scalar(
                    select(func.count())
                    .select_from(Story)
                    .where(Story.id > last_before, Story.status == "published")
                )
                or 0
            )
        if published >= posts:
            break
        time.sleep(0.1)
    all_published = time.perf_counter() - started
    # The newest stories are in the feed once it has been rendered after the last publish.
    while time.perf_counter() < deadline:
        body = cluster.http.get("/feeds/all.atom").text
        if all(f"{prefix} {i}<" in body for i in range(posts - 5, posts)) or last in body:
            break
        time.sleep(0.05)
    done = time.perf_counter() - started
    return {
        "posts": posts,
        "accepted_s": round(accepted, 2),
        "published_s": round(all_published, 2),
        "in_feed_s": round(done, 2),
        "posts_per_s": round(posts / done, 1),
    }


def seed_archive(count: int) -> float:
    """Store ``count`` published stories straight into the database; returns the seconds taken."""
    from sqlalchemy import insert, text

    from services.ingest.service import add_source
    from shared.models import Story, utcnow

    started = time.perf_counter()
    with session_scope() as session:
        source, _ = add_source(session, name=f"archive-{secrets.token_hex(3)}")
        source_id = source.id
    now = utcnow() - timedelta(days=3)
    batch = 5000
    for offset in range(0, count, batch):
        rows = [
            {
                "source_id": source_id,
                "guid": f"urn:archive:{n}",
                "slug": f"archive-{n}",
                "status": "published",
                "revision": 2,
                "wire_version": 1,
                "content_hash": f"{n:064d}",
                "headline": f"Archived story {n}",
                "lede": "An archived story.",
                "body_html": "<p>Archived.</p>",
                "body_text": "Archived.",
                "section": ("world", "business", "sport", "culture")[n % 4],
                "author_slug": f"author-{n % 50}",
                "published_at": now - timedelta(minutes=n),
                "created_at": now,
                "modified_at": now,
            }
            for n in range(offset, min(count, offset + batch))
        ]
        with session_scope() as session:
            session.execute(insert(Story), rows)
    # As after any bulk load: the planner's statistics, which autovacuum would gather only
    # a minute or so later (until then PostgreSQL scans and sorts the archive for each feed).
    with session_scope() as session:
        session.execute(text("ANALYZE stories"))
    return round(time.perf_counter() - started, 1)


def run_backend(backend: str, database_url: str, directory: Path, *, archive: int) -> dict[str, Any]:
    """Start a cluster on one database, optionally seed an archive, and measure."""
    cluster = Cluster(directory, database_url)
    # The production lease: the fault tests' short one would re-send work merely queued.
    cluster.env.update({"NEWSROOM_LOG_LEVEL": "WARNING", "NEWSROOM_OUTBOX_LEASE": "120"})
    from services.ingest.service import add_source
    from shared.migrate import upgrade

    result: dict[str, Any] = {}
    with newsroom_environment(cluster.env):
        upgrade()
        if archive:
            result["archive_stories"] = archive
            result["archive_seed_s"] = seed_archive(archive)
        cluster.start_all()
        try:
            with session_scope() as session:
                source, token = add_source(session, name=f"bench-{secrets.token_hex(3)}", auto_publish=True)
                name = source.name
            result["steady"] = steady(cluster, name, token, rate=RATE, seconds=SECONDS)
            result["sustained"] = sustained(cluster, name, token, posts=POSTS)
            result["peak_rss_mb"] = {part: peak_rss_mb(p.pid) for part, p in cluster.processes.items()}
            if cluster.redis.process:
                result["peak_rss_mb"]["redis"] = peak_rss_mb(cluster.redis.process.pid)
        finally:
            cluster.stop_all()
    return result


def postgres_url() -> str | None:
    """A fresh PostgreSQL database for the run, or None without a server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("NEWSROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"newsroom_bench_{secrets.token_hex(3)}"
    try:
        admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception:
        return None
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def run() -> dict[str, Any]:
    """The whole load benchmark; prints nothing, returns the numbers."""
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="newsroom-bench-") as temp:
        root = Path(temp)
        if BASELINE:
            own = OwnRedis(root / "baseline-redis")
            own.start()
            try:
                results["baseline_chain"] = chain_baseline(own.url)
                results["baseline_chain_two_solo_workers"] = chain_baseline(own.url, solo=True)
            finally:
                own.stop()
        for backend in BACKENDS:
            # BENCH_ARCHIVE=0 runs the empty database once (no second phase of the same name).
            for archive in sorted({0, ARCHIVE}):
                directory = root / f"{backend}-{archive}"
                directory.mkdir()
                url = f"sqlite:///{directory / 'newsroom.db'}" if backend == "sqlite" else postgres_url()
                if url is None:
                    results[backend] = {"skipped": "no PostgreSQL server"}
                    break
                results.setdefault(backend, {})[f"archive_{archive}"] = run_backend(
                    backend, url, directory, archive=archive
                )
    results["targets"] = targets(results)
    return results


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked against this run."""
    checks: dict[str, Any] = {}
    if "baseline_chain" not in results:
        return checks
    chain_rate = results["baseline_chain"]["chains_per_s"]
    for backend in BACKENDS:
        runs = results.get(backend, {})
        empty, full = runs.get("archive_0"), runs.get(f"archive_{ARCHIVE}") if ARCHIVE else None
        if not empty:
            continue
        checks[f"{backend}_p99_wire_to_feed_le_250ms"] = empty["steady"]["p99_ms"] <= 250
        checks[f"{backend}_sustained_ge_half_chain_rate"] = (
            empty["sustained"]["posts_per_s"] >= chain_rate / 2
        )
        ratio = empty["sustained"]["posts_per_s"] / chain_rate
        checks[f"{backend}_sustained_over_chain_rate"] = round(ratio, 3)
        if full:
            p99_growth = full["steady"]["p99_ms"] / max(empty["steady"]["p99_ms"], 1e-9) - 1
            rate_drop = 1 - full["sustained"]["posts_per_s"] / max(empty["sustained"]["posts_per_s"], 1e-9)
            checks[f"{backend}_archive_p99_growth"] = round(p99_growth, 3)
            checks[f"{backend}_archive_throughput_drop"] = round(rate_drop, 3)
            checks[f"{backend}_archive_within_20pct"] = p99_growth <= 0.2 and rate_drop <= 0.2
    return checks
