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
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis as redis_lib
from lxml import etree

from bench.cpu import CpuMeter, postgres_postmaster
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
# Databases on which the scaling runs (1-3 worker processes, 1-3 API processes) are made; "off": none.
SCALING = [b for b in os.environ.get("BENCH_SCALING", "postgresql").split(",") if b and b != "off"]
SCALING_POSTS = int(os.environ.get("BENCH_SCALING_POSTS", "600"))
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
        # When the last answer (200 or 304) came.
        self.fetched_at = 0.0
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
            self.fetched_at = now
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
    # The same moments on the wall clock, to compare with the times the pipeline stored.
    sent_wall: dict[str, float] = {}
    accepted: list[float] = []
    total = int(rate * seconds)
    started = time.perf_counter()

    def post(i: int) -> None:
        headline = f"Steady {i} {secrets.token_hex(3)}"
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[headline] = time.perf_counter()
        sent_wall[headline] = time.time()
        answer = cluster.http.post(f"/v1/wire/{source}", content=ninjs(headline), headers=headers)
        accepted.append(time.perf_counter() - sent[headline])
        answer.raise_for_status()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, range(total)))
    # Every post is waited for (a backlog would spill into the next measurement), up to a limit.
    # The feed holds the newest 50: a story that left it before the watcher looked is never
    # seen, so the wait also ends once the pipeline is idle and the watcher has looked since.
    deadline = time.perf_counter() + DRAIN_SECONDS
    idle_since: float | None = None
    while len([h for h in sent if h in watcher.seen]) < total and time.perf_counter() < deadline:
        if idle_since is None and pipeline_idle():
            idle_since = time.perf_counter()
        if idle_since is not None and watcher.fetched_at > idle_since + 0.5:
            break
        time.sleep(0.05)
    watcher.close()
    wait_until_all_published(deadline)
    latencies = [watcher.seen[h] - t for h, t in sent.items() if h in watcher.seen]
    published = published_after(sent_wall)
    return {
        "posts": total,
        "rate_per_s": rate,
        "in_feed": len(latencies),
        # Left the feed before the watcher saw them (it could not fetch fast enough).
        "missed": total - len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        # Where the time goes: the API's answer (202), and the story's published_at.
        "accepted_p50_ms": percentile(accepted, 50),
        "accepted_p99_ms": percentile(accepted, 99),
        "published_p50_ms": percentile(published, 50),
        "published_p99_ms": percentile(published, 99),
    }


def published_after(sent_wall: dict[str, float]) -> list[float]:
    """Seconds from each post to its story's ``published_at``, as the pipeline stored it."""
    from sqlalchemy import select

    from shared.models import Story

    with session_scope(read_only=True) as session:
        rows = session.execute(
            select(Story.headline, Story.published_at).where(
                Story.headline.in_(list(sent_wall)), Story.published_at.is_not(None)
            )
        ).all()
    return [
        row.published_at.replace(tzinfo=row.published_at.tzinfo or UTC).timestamp() - sent_wall[row.headline]
        for row in rows
    ]


def pipeline_idle() -> bool:
    """No receipt pending, no story waiting to be published, and `all` rendered since."""
    from sqlalchemy import func, select

    from shared.models import Feed, Receipt, Story

    with session_scope(read_only=True) as session:
        pending = session.scalar(select(func.count(Receipt.id)).where(Receipt.status == "pending"))
        ingested = session.scalar(select(func.count(Story.id)).where(Story.status == "ingested"))
        dirty = session.scalar(select(Feed.dirty_at).where(Feed.key == "all"))
    return not pending and not ingested and dirty is None


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
            # CPU at the steady rate too: there posts come one at a time, not in batches.
            meter = CpuMeter(cpu_parts(cluster, database_url))
            commits = Commits(database_url)
            meter.start()
            result["steady"] = steady(cluster, name, token, rate=RATE, seconds=SECONDS)
            result["steady"]["cpu_ms_per_post"] = meter.stop(result["steady"]["posts"])
            result["steady"]["commits_per_post"] = commits.per(result["steady"]["posts"])
            meter = CpuMeter(cpu_parts(cluster, database_url))
            commits = Commits(database_url)
            meter.start()
            client_before = time.process_time()
            result["sustained"] = sustained(cluster, name, token, posts=POSTS)
            result["sustained"]["cpu_ms_per_post"] = meter.stop(POSTS)
            # The load generator's own (left out of the figure above; it shares the machine).
            client = (time.process_time() - client_before) * 1000 / POSTS
            result["sustained"]["load_generator_cpu_ms_per_post"] = round(client, 2)
            result["sustained"]["commits_per_post"] = commits.per(POSTS)
            result["peak_rss_mb"] = {part: peak_rss_mb(p.pid) for part, p in cluster.processes.items()}
            if cluster.redis.process:
                result["peak_rss_mb"]["redis"] = peak_rss_mb(cluster.redis.process.pid)
        finally:
            cluster.stop_all()
    return result


def scaling(backend: str, database_url: str, directory: Path) -> dict[str, Any]:
    """Sustained throughput with 1, 2, 3 worker processes (one API process), then with 1, 2, 3
    API processes (two worker processes): what each process adds, for sizing."""
    from services.ingest.service import add_source
    from shared.migrate import upgrade

    runs: dict[str, Any] = {}
    configs = [(1, 1), (1, 2), (1, 3), (2, 2), (3, 2)]
    for api_processes, worker_processes in configs:
        cluster = Cluster(directory / f"scaling-{api_processes}-{worker_processes}", database_url)
        cluster.directory.mkdir(parents=True)
        cluster.env.update({"NEWSROOM_LOG_LEVEL": "WARNING", "NEWSROOM_OUTBOX_LEASE": "120"})
        with newsroom_environment(cluster.env):
            upgrade()
            cluster.start_all(api_processes=api_processes, worker_processes=worker_processes)
            try:
                with session_scope() as session:
                    source, token = add_source(
                        session, name=f"scaling-{secrets.token_hex(3)}", auto_publish=True
                    )
                    name = source.name
                # Warm: connections, caches and the first renders, as a running newsroom is.
                sustained(cluster, name, token, posts=50)
                meter = CpuMeter(cpu_parts(cluster, database_url))
                meter.start()
                run = sustained(cluster, name, token, posts=SCALING_POSTS)
                run["cpu_ms_per_post"] = meter.stop(SCALING_POSTS)
                # How fast the API took the posts while the workers ran beside it.
                run["accepted_per_s"] = round(SCALING_POSTS / run["accepted_s"], 1)
                runs[f"api_{api_processes}_workers_{worker_processes}"] = run
            finally:
                cluster.stop_all()
    result: dict[str, Any] = {"runs": runs}
    for kind, index in (("workers", 1), ("api", 0)):
        fixed = configs[1][1 - index]
        series = [
            (config[index], runs[f"api_{config[0]}_workers_{config[1]}"]["posts_per_s"])
            for config in configs
            if config[1 - index] == fixed
        ]
        series.sort()
        result[f"{kind}_processes"] = [
            {
                "processes": count,
                "posts_per_s": rate,
                "per_process": round(rate / count, 1),
                "added_by_this_process": round(rate - series[n - 1][1], 1) if n else rate,
            }
            for n, (count, rate) in enumerate(series)
        ]
    return result


def cpu_parts(cluster: Cluster, database_url: str) -> dict[str, int]:
    """The processes whose CPU time counts: the pipeline's, Redis's and the local database server's."""
    parts = {name: process.pid for name, process in cluster.processes.items()}
    if cluster.redis.process:
        parts["redis"] = cluster.redis.process.pid
    if database_url.startswith("postgresql"):
        postmaster = postgres_postmaster(database_url)
        if postmaster is not None:
            parts["postgresql"] = postmaster
    return parts


class Commits:
    """Transactions committed in the database between two readings (PostgreSQL's statistics)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url if database_url.startswith("postgresql") else None
        self.before = self.read()

    def read(self) -> int | None:
        if self.url is None:
            return None
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                # Statistics are flushed by each backend at most once a second.
                connection.execute(text("SELECT pg_stat_clear_snapshot()"))
                return int(
                    connection.scalar(
                        text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                    )
                    or 0
                )
        finally:
            engine.dispose()

    def per(self, count: int) -> float | None:
        if self.before is None:
            return None
        time.sleep(1.5)
        after = self.read()
        return None if after is None else round((after - self.before) / max(count, 1), 2)


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
    _created.append(name)
    return make_url(base).set(database=name).render_as_string(hide_password=False)


# The databases this run made, dropped at its end.
_created: list[str] = []


def drop_databases() -> None:
    """Drop the PostgreSQL databases this run made."""
    from sqlalchemy import create_engine, text

    from shared.db import dispose_engines

    if not _created:
        return
    dispose_engines()
    base = os.environ.get("NEWSROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            while _created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{_created.pop()}" WITH (FORCE)'))
    finally:
        admin.dispose()


def run() -> dict[str, Any]:
    """The whole load benchmark; prints nothing, returns the numbers."""
    try:
        return _measure()
    finally:
        drop_databases()


def _measure() -> dict[str, Any]:
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
            if (
                backend in SCALING
                and isinstance(results.get(backend), dict)
                and "skipped" not in results[backend]
            ):
                directory = root / f"{backend}-scaling"
                directory.mkdir()
                url = f"sqlite:///{directory / 'newsroom.db'}" if backend == "sqlite" else postgres_url()
                if url is not None:
                    results[backend]["scaling"] = scaling(backend, url, directory)
    results["targets"] = targets(results)
    return results


# The targets, per database: p99 wire -> feed at 50 posts/s (ms), sustained throughput as a
# share of the empty chain's, CPU per post across processes (ms; None: not set).
TARGETS = {"postgresql": (150.0, 0.7, 8.0), "sqlite": (250.0, 0.5, None)}
# With the archive stored: at most this much slower (p99 and sustained throughput).
ARCHIVE_SLOWDOWN = 0.2


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The targets, checked against this run: name -> {"value", "target", "holds"}."""
    checks: dict[str, Any] = {}
    chain_rate = results.get("baseline_chain_two_solo_workers", results.get("baseline_chain", {})).get(
        "chains_per_s"
    )
    for backend in BACKENDS:
        runs = results.get(backend, {})
        empty, full = runs.get("archive_0"), runs.get(f"archive_{ARCHIVE}") if ARCHIVE else None
        if not empty or backend not in TARGETS:
            continue
        p99_limit, share, cpu_limit = TARGETS[backend]

        prefix = f"{backend}_"
        steady_p99 = empty["steady"]["p99_ms"]
        checks[prefix + "p99_wire_to_feed_ms"] = _check(steady_p99, "<=", p99_limit)
        if chain_rate:
            ratio = empty["sustained"]["posts_per_s"] / chain_rate
            checks[prefix + "sustained_over_chain"] = _check(ratio, ">=", share)
        cpu = empty["sustained"].get("cpu_ms_per_post", {}).get("total")
        if cpu_limit is not None and cpu is not None:
            checks[prefix + "cpu_ms_per_post"] = _check(cpu, "<=", cpu_limit)
        if full:
            growth = full["steady"]["p99_ms"] / max(steady_p99, 1e-9) - 1
            drop = 1 - full["sustained"]["posts_per_s"] / max(empty["sustained"]["posts_per_s"], 1e-9)
            checks[prefix + "archive_p99_growth"] = _check(growth, "<=", ARCHIVE_SLOWDOWN)
            checks[prefix + "archive_throughput_drop"] = _check(drop, "<=", ARCHIVE_SLOWDOWN)
    return checks


def _check(value: float, op: str, target: float) -> dict[str, Any]:
    holds = value <= target if op == "<=" else value >= target
    return {"value": round(value, 3), "op": op, "target": target, "holds": holds}


def table(results: dict[str, Any]) -> str:
    """The run as a table, with the empty chain beside it, and the targets."""
    chain = results.get("baseline_chain_two_solo_workers") or results.get("baseline_chain")
    rows = [
        "| | wire -> in /feeds/all.atom, p50 / p95 / p99 ms | sustained, posts/s | x empty chain "
        "| CPU ms per post (api / worker / scheduler / redis / database = total) "
        "| PostgreSQL transactions committed per post (the pool's pings included) "
        "| load generator's CPU ms per post (left out) "
        "| at the steady rate: CPU ms per post (total), transactions per post |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    baselines = (
        ("baseline_chain_two_solo_workers", "two solo workers, as the pipeline's run; the baseline"),
        ("baseline_chain", "one prefork worker with two processes"),
    )
    for key, how in baselines:
        if key in results:
            one = results[key]
            ratio = round(one["chains_per_s"] / chain["chains_per_s"], 2) if chain else "-"
            rows.append(
                f"| empty three-hop Celery chain ({how}) | {one['p50_ms']} / - / {one['p99_ms']} "
                f"| {one['chains_per_s']} chains/s | {ratio} | | | | |"
            )
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    for backend in BACKENDS:
        for phase, run in results.get(backend, {}).items():
            if not isinstance(run, dict) or "steady" not in run:
                continue
            stored = int(phase.removeprefix("archive_"))
            label = names.get(backend, backend) + (f", {stored:,} stored" if stored else "")
            steady, burst = run["steady"], run["sustained"]
            ratio = round(burst["posts_per_s"] / chain["chains_per_s"], 2) if chain else "-"
            cpu = burst.get("cpu_ms_per_post") or {}
            parts = " / ".join(
                str(cpu.get(part, "-")) for part in ("api", "worker", "scheduler", "redis", "postgresql")
            )
            missed = f" ({steady['missed']} not seen)" if steady.get("missed") else ""
            rows.append(
                f"| {label} | {steady['p50_ms']} / {steady['p95_ms']} / {steady['p99_ms']}{missed} "
                f"| {burst['posts_per_s']} | {ratio} | {parts} = {cpu.get('total', '-')} "
                f"| {burst.get('commits_per_post') or '-'} "
                f"| {burst.get('load_generator_cpu_ms_per_post', '-')} "
                f"| {(steady.get('cpu_ms_per_post') or {}).get('total', '-')}, "
                f"{steady.get('commits_per_post') or '-'} |"
            )
    for backend in BACKENDS:
        scaled = results.get(backend, {}).get("scaling") if isinstance(results.get(backend), dict) else None
        if not scaled:
            continue
        rows += [
            "",
            f"| {names.get(backend, backend)}: processes | sustained posts/s | per process "
            "| added by this one |",
            "| --- | --- | --- | --- |",
        ]
        for kind, fixed in (("workers", "one API process"), ("api", "two worker processes")):
            for step in scaled[f"{kind}_processes"]:
                what = "worker" if kind == "workers" else "API"
                rows.append(
                    f"| {step['processes']} {what} ({fixed}) | {step['posts_per_s']} | {step['per_process']} "
                    f"| {step['added_by_this_process']} |"
                )
    checks = results.get("targets") or {}
    if checks:
        rows += ["", "| target | this run | holds |", "| --- | --- | --- |"]
        for name, check in checks.items():
            rows.append(f"| {name} {check['op']} {check['target']} | {check['value']} | {check['holds']} |")
    return "\n".join(rows)
