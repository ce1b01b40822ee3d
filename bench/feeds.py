"""Feeds: render time, serving rate of stored feeds, and renders per feed in a burst.

Measures, on this machine, in one run (its own data dir, SQLite, an embedded Redis):
- render time of a 50-entry feed in each format (in this process, best and median of many);
- GET of a stored feed through the real app under uvicorn, with 16 concurrent keep-alive
  connections from wrk (or several client processes without it), as 200s and as 304s,
  beside a bare ASGI app serving the same bytes under the same uvicorn in the same run
  (target: the feed at no less than half the bare rate); both with the project's HTTP
  protocol (shared.httpserver: a response in one write), and the app also under uvicorn's
  own httptools protocol, alternately, for what that buys (requests/s, p99 and the server's
  CPU per answer);
- a burst of 200 publishes (each its own transaction, as fast as they come) through a real
  worker and scheduler: renders per affected feed (target: at most 10) and the time from
  each publish to its story in the stored `all` feed; then the same 200 paced at 50 per second.

`python -m bench feeds`; BENCH_FEEDS_SECONDS (default 4) sets each GET measurement's length,
BENCH_FEEDS_ROUNDS (default 2) how many times each is taken.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GET_SECONDS = float(os.environ.get("BENCH_FEEDS_SECONDS", "4"))
CLIENTS = 16
# Each serving measurement is taken this many times, the two protocols alternately.
ROUNDS = int(os.environ.get("BENCH_FEEDS_ROUNDS", "2"))
BURST = 200
PACED_RATE = 50.0
BODY = "".join(
    f"<p>Paragraph {i}: Київ &amp; Львів, <a href='https://example.org/{i}'>a link</a>, "
    f"<strong>emphasis</strong> 🎉 and enough words to weigh about four kilobytes.</p>"
    for i in range(22)
)
SECTIONS = ("World", "Economy", "Culture & Arts", "Світ", "Sport")
TAGS = tuple(f"Tag {n}" for n in range(20))
AUTHORS = tuple(f"Author {n}" for n in range(10))

BARE_APP = """
import os

BODY = open(os.environ["BENCH_BODY"], "rb").read()
ETAG = os.environ["BENCH_ETAG"].encode()
OK = [(b"content-type", b"application/atom+xml; charset=utf-8"), (b"etag", ETAG),
      (b"content-length", str(len(BODY)).encode())]
NOT_MODIFIED = [(b"etag", ETAG)]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if dict(scope["headers"]).get(b"if-none-match") == ETAG:
        await send({"type": "http.response.start", "status": 304, "headers": NOT_MODIFIED})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": OK})
    await send({"type": "http.response.body", "body": BODY})
"""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of seconds, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000, 1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------------------
# Render time


def render_times() -> dict[str, Any]:
    """Milliseconds to render a 50-entry feed, per format."""
    from services.syndicate.feeds import FEED_FORMATS, FeedKey, render_feed
    from shared.config import Settings
    from shared.models import Story, StoryLabel, StoryTag

    settings = Settings(site_url="https://news.example.com", websub_hubs="https://hub.example.com/")
    now = datetime(2025, 7, 18, 16, 16, tzinfo=UTC)
    stories = [
        Story(
            id=n,
            slug=f"story-{n}",
            revision=2,
            headline=f"Київ & <Львів>: story {n} 🎉",
            lede="Лід: a < b & c 🎉",
            body_html=BODY,
            body_text=BODY,
            author_name=AUTHORS[n % 10],
            author_slug=f"author-{n % 10}",
            section=SECTIONS[n % 5],
            language="uk",
            published_at=now - timedelta(minutes=n),
            updated_at=now if n % 3 == 0 else None,
            tags=[StoryTag(slug=f"tag-{n % 20}", name=TAGS[n % 20])],
            labels=[StoryLabel(label="exclusive")] if n % 4 == 0 else [],
            picture={"url": f"https://cdn.example.com/{n}.jpg", "media_type": "image/jpeg", "size": 1000},
        )
        for n in range(50)
    ]
    results: dict[str, Any] = {}
    for fmt in FEED_FORMATS:
        for _ in range(5):
            render_feed(FeedKey("all"), fmt, stories, settings=settings)  # type: ignore[arg-type]
        times = []
        for _ in range(60):
            started = time.perf_counter()
            feed = render_feed(FeedKey("all"), fmt, stories, settings=settings)  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
        results[fmt] = {
            "best_ms": round(min(times) * 1000, 2),
            "median_ms": round(statistics.median(times) * 1000, 2),
            "bytes": len(feed.body),
        }
    return results


# ---------------------------------------------------------------------------------------------
# Serving


def load(port: int, path: str, *, headers: dict[str, str] | None = None, seconds: float) -> dict[str, Any]:
    """Requests per second from CLIENTS keep-alive connections for ``seconds``, generated by wrk
    when it is installed, else by several client processes (bench.pages), so that the load
    generator is not what limits the rate."""
    from bench.pages import measure

    base = f"http://127.0.0.1:{port}"
    measure(base, [path], connections=CLIENTS, seconds=0.5, headers=headers)  # warm up
    return measure(base, [path], connections=CLIENTS, seconds=seconds, headers=headers)


# Starts an app under uvicorn with the given HTTP protocol (uvicorn's command line takes only
# its own protocols' names).
LAUNCH = """
import sys

import uvicorn

app, port, http = sys.argv[1:]
uvicorn.run(app, host="127.0.0.1", port=int(port), http=http, log_level="warning", access_log=False,
            lifespan="off")
"""


@contextmanager
def uvicorn(app: str, port: int, env: dict[str, str], log: Path, *, http: str) -> Iterator[int]:
    """An app under uvicorn (one process, its default loop), until the block ends; yields its pid."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, app, str(port), http],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start; see {log}") from None
                time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def served(pid: int, port: int, path: str, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``load``, with the server process's CPU time per answer (the load generator's not counted)."""
    from bench.cpu import tree_seconds

    before = tree_seconds(pid)
    result = load(port, path, headers=headers, seconds=GET_SECONDS)
    spent = tree_seconds(pid) - before
    # load() warms up for half a second before it measures.
    answers = (result["requests_per_second"] or 0) * GET_SECONDS
    result["server_cpu_us_per_answer"] = round(spent * 1e6 / answers, 1) if answers else None
    return result


def _ranges(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("requests_per_second", "p99_ms", "server_cpu_us_per_answer")
    return {key: [run.get(key) for run in runs] for key in keys}


def serving(data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Stored feed through the app vs. the same bytes from a bare ASGI app, both under the
    project's HTTP protocol (shared.httpserver); and the app under uvicorn's own httptools
    protocol beside it, alternately, for what one write per response buys."""
    import httpx

    from shared.httpserver import HTTP_PROTOCOL

    app_port, plain_port, bare_port = free_port(), free_port(), free_port()
    results: dict[str, Any] = {"clients": CLIENTS, "seconds": GET_SECONDS}
    runs: dict[str, list[dict[str, Any]]] = {}
    with (
        uvicorn("services.app:app", app_port, env, data_dir / "api.log", http=HTTP_PROTOCOL) as app_pid,
        uvicorn("services.app:app", plain_port, env, data_dir / "plain.log", http="httptools") as plain_pid,
    ):
        first = httpx.get(f"http://127.0.0.1:{app_port}/feeds/all.atom")
        assert first.status_code == 200, first.text
        etag = first.headers["etag"]
        (data_dir / "all.atom").write_bytes(first.content)
        results["feed_bytes"] = len(first.content)
        for round_ in range(ROUNDS):
            for status, headers in (("200", None), ("304", {"If-None-Match": etag})):
                servers = [("feed", app_pid, app_port), ("uvicorn_writes", plain_pid, plain_port)]
                for name, pid, port in servers[:: 1 if round_ % 2 == 0 else -1]:  # each first in turn
                    run = served(pid, port, "/feeds/all.atom", headers=headers)
                    runs.setdefault(f"{name}_{status}", []).append(run)
    (data_dir / "bare_app.py").write_text(BARE_APP)
    bare_env = {
        **env,
        "BENCH_BODY": str(data_dir / "all.atom"),
        "BENCH_ETAG": etag,
        "PYTHONPATH": str(data_dir),
    }
    with uvicorn("bare_app:app", bare_port, bare_env, data_dir / "bare.log", http=HTTP_PROTOCOL) as bare_pid:
        for _round in range(ROUNDS):
            runs.setdefault("bare_200", []).append(served(bare_pid, bare_port, "/"))
            conditional = served(bare_pid, bare_port, "/", headers={"If-None-Match": etag})
            runs.setdefault("bare_304", []).append(conditional)
    for name, measured in runs.items():
        results[name] = _ranges(measured)

    def rate(name: str) -> float:
        return statistics.median(run["requests_per_second"] or 0 for run in runs[name]) or 1.0

    ratio = rate("feed_200") / rate("bare_200")
    results["feed_to_bare_200"] = round(ratio, 2)
    results["feed_to_bare_304"] = round(rate("feed_304") / rate("bare_304"), 2)
    results["one_write_over_uvicorn_writes_200"] = round(rate("feed_200") / rate("uvicorn_writes_200"), 2)
    results["one_write_over_uvicorn_writes_304"] = round(rate("feed_304") / rate("uvicorn_writes_304"), 2)
    results["target_feed_to_bare"] = 0.5
    # The target is the stored feed itself (200s); a 304 is reported beside it.
    results["meets_target"] = ratio >= 0.5
    return results


# ---------------------------------------------------------------------------------------------
# Bursts through the real worker


def _stories(source_id: int, count: int, run: str) -> list[int]:
    from shared.db import session_scope
    from shared.models import Story
    from shared.stories import set_tags
    from shared.text import html_to_text

    ids = []
    with session_scope() as session:
        for n in range(count):
            headline = f"{run} story {n}: Київ & <Львів> 🎉"
            story = Story(
                source_id=source_id,
                guid=f"urn:bench:{run}:{n}",
                slug=f"{run}-{n}",
                status="ingested",
                revision=1,
                content_hash=f"{run}{n}",
                headline=headline,
                lede="Лід: a < b & c",
                body_html=BODY,
                body_text=html_to_text(BODY),
                language="uk",
                section=SECTIONS[n % 5],
                author_name=AUTHORS[n % 10],
                author_slug=f"author-{n % 10}",
            )
            session.add(story)
            session.flush()
            set_tags(story, [TAGS[n % 20], TAGS[(n * 7 + 3) % 20]])
            ids.append(story.id)
    return ids


class AllFeedWatcher:
    """Notes when each story first appears in the stored `all` feed (on the renderer's announcements)."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.client = redis.Redis.from_url(redis_url)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        from services.syndicate.service import FEEDS_CHANNEL, stored_document
        from shared.db import session_scope

        with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
            pubsub.subscribe(FEEDS_CHANNEL)
            while not self.stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if not message or b"all" not in message["data"].split(b"\n"):
                    continue
                at = time.perf_counter()
                with session_scope(read_only=True) as session:
                    stored = stored_document(session, "all", "json")
                for item in json.loads(stored.body)["items"] if stored else []:
                    self.seen.setdefault(item["url"].rsplit("/", 1)[-1], at)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _renders() -> dict[str, int]:
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.models import Feed

    with session_scope(read_only=True) as session:
        return dict(session.execute(select(Feed.key, Feed.renders)).tuples().all())


def _idle() -> bool:
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.models import Feed, OutboxEvent

    with session_scope(read_only=True) as session:
        dirty = session.scalar(select(Feed.key).where(Feed.dirty_at.is_not(None)).limit(1))
        unsent = session.scalar(select(OutboxEvent.id).where(OutboxEvent.sent_at.is_(None)).limit(1))
    return dirty is None and unsent is None


def burst(source_id: int, watcher: AllFeedWatcher, *, rate: float | None) -> dict[str, Any]:
    """Publish BURST stories (at ``rate`` per second, or as fast as they go) and wait for the feeds."""
    from services.publish.service import publish_story
    from shared.db import session_scope

    run = f"b{secrets.token_hex(3)}"
    ids = _stories(source_id, BURST, run)
    before = _renders()
    published: dict[str, float] = {}
    started = time.perf_counter()
    for n, story_id in enumerate(ids):
        if rate:
            time.sleep(max(0.0, started + n / rate - time.perf_counter()))
        with session_scope() as session:
            publish_story(session, story_id=story_id, actor="bench")
        published[f"{run}-{n}"] = time.perf_counter()
    publishing = time.perf_counter() - started
    deadline = time.monotonic() + 120
    # The `all` feed shows the newest 50; the last 50 published must reach it.
    last = list(published)[-50:]
    while not all(slug in watcher.seen for slug in last) or not _idle():
        if time.monotonic() > deadline:
            raise RuntimeError("the burst did not reach the feeds within 120 s")
        time.sleep(0.05)
    settled = time.perf_counter() - started
    after = _renders()
    renders = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    latencies = [watcher.seen[slug] - at for slug, at in published.items() if slug in watcher.seen]
    return {
        "publishes": BURST,
        "publish_seconds": round(publishing, 2),
        "until_feeds_settled_seconds": round(settled, 2),
        "feeds_rendered": len(renders),
        "renders_of_all": renders.get("all", 0),
        "max_renders_per_feed": max(renders.values()),
        "mean_renders_per_feed": round(statistics.mean(renders.values()), 2),
        "publish_to_all_feed_ms": {
            "stories_seen": len(latencies),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": percentile(latencies, 100),
        },
    }


def bursts(data_dir: Path, env: dict[str, str], redis_url: str) -> dict[str, Any]:
    """Publishes through a real worker (two processes) and scheduler."""
    from services.ingest.service import add_source
    from shared.db import session_scope

    with session_scope() as session:
        source, _ = add_source(session, name="bench-feeds", format="ninjs")
        source_id = source.id
    logs = {name: open(data_dir / f"{name}.log", "ab") for name in ("worker", "scheduler")}  # noqa: SIM115
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "-c", "2", "--loglevel", "WARNING"],
            env=env,
            cwd=ROOT,
            stdout=logs["worker"],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", "scheduler"],
            env=env,
            cwd=ROOT,
            stdout=logs["scheduler"],
            stderr=subprocess.STDOUT,
        ),
    ]
    watcher = AllFeedWatcher(redis_url)
    try:
        # Warm up the worker's processes (imports, connections) with a few publishes.
        warm = _stories(source_id, 5, f"w{secrets.token_hex(3)}")
        from services.publish.service import publish_story

        for story_id in warm:
            with session_scope() as session:
                publish_story(session, story_id=story_id, actor="bench")
        deadline = time.monotonic() + 60
        while not _idle() or not watcher.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not render; see {data_dir}/worker.log")
            time.sleep(0.1)
        time.sleep(0.5)
        results = {"as_fast_as_possible": burst(source_id, watcher, rate=None)}
        time.sleep(0.5)
        results[f"paced_{PACED_RATE:g}_per_second"] = burst(source_id, watcher, rate=PACED_RATE)
        results["target_max_renders_per_feed"] = 10
        results["meets_target"] = results["as_fast_as_possible"]["max_renders_per_feed"] <= 10
        return results
    finally:
        watcher.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for handle in logs.values():
            handle.close()


# ---------------------------------------------------------------------------------------------


def run() -> dict[str, Any]:
    """Render times, serving rates against a bare ASGI app, and renders per feed in bursts."""
    from shared.migrate import upgrade
    from shared.redis import EmbeddedRedis
    from tests.helpers.support import newsroom_environment

    data_dir = Path(tempfile.mkdtemp(prefix="newsroom-bench-feeds-"))
    redis_server = EmbeddedRedis(data_dir / "redis", appendonly=False)
    try:
        redis_url = redis_server.start()
        env_vars = {
            "NEWSROOM_DATA_DIR": str(data_dir),
            "NEWSROOM_DATABASE_URL": f"sqlite:///{data_dir}/newsroom.db",
            "NEWSROOM_REDIS_URL": redis_url,
            "NEWSROOM_SITE_URL": "http://127.0.0.1:8000",
            "NEWSROOM_LOG_LEVEL": "WARNING",
            # One address polls as fast as it can: a limit it never reaches, still checked.
            "NEWSROOM_RATE_PUBLIC": "10000000/minute",
        }
        with newsroom_environment(env_vars):
            env = {**os.environ}
            upgrade()
            results: dict[str, Any] = {"database": "sqlite", "render_50_entries": render_times()}
            bursts_result = bursts(data_dir, env, redis_url)
            results["serving_all_atom"] = serving(data_dir, env)
            results["bursts"] = bursts_result
            results["meets_targets"] = bool(
                results["serving_all_atom"]["meets_target"] and bursts_result["meets_target"]
            )
            return results
    finally:
        redis_server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
