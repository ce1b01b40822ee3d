"""Reader pages beside the feeds: serving rates, and a spike of readers beside the pipeline.

Measures, on this machine, in one run:
- serving: `newsroom up --demo` (SQLite, embedded Redis, one API process), then the same load
  generator, one path after another: `/feeds/all.atom` as 200s and as 304s, `/`, a story page,
  a tag page and `/sitemaps/news.xml`: requests/s, latency p50 and p99 (target: `/` and the
  story page at no less than half the rate of `/feeds/all.atom`, with p99 under 5 ms);
- a spike beside the pipeline: the pipeline as separate processes (tests/helpers/cluster.py), posts
  flowing at BENCH_SPIKE_RATE a second, wire -> `/feeds/all.atom` latency without readers,
  then again while BENCH_SPIKE_READERS concurrent readers read `/` and story pages (each
  pausing BENCH_SPIKE_READER_PAUSE_MS between pages; 0 reads flat out), then once more
  without: the pages' p99 beside the wire -> feed p99 (target: readers slow the pipeline by
  at most 20%, against the slower of the two runs without readers).

The load generator is `wrk` when it is installed (`apt-get install wrk`), else several client
processes (asyncio, keep-alive), so that it is not the bottleneck.
Environment: BENCH_PAGES_SECONDS (10: each serving measurement), BENCH_PAGES_CONNECTIONS (16),
BENCH_SPIKE_RATE (50), BENCH_SPIKE_SECONDS (30), BENCH_SPIKE_READERS (200),
BENCH_SPIKE_READER_PAUSE_MS (100,0: one run per value), BENCH_SPIKE_BACKEND (sqlite or
postgresql; default sqlite), BENCH_SPIKE_SITE (separate, the default: the readers read from an
API process of their own, as compose.yaml's `site`; shared: from the API process that takes the
posts), BENCH_SPIKE_READER_NICE (19: the readers' load generator at this lower CPU priority, as
readers elsewhere) and BENCH_SPIKE_SITE_NICE (19: their own API process too, as a site on cores of
its own; 0 puts it on equal terms with the pipeline). Where the kernel groups processes by
session (autogroup), the priority is set on the process's group (``lower_priority``); and
with BENCH_SPIKE_IDLE (on; "off": the nice alone) what runs at a lower priority also runs
SCHED_IDLE, on cycles the pipeline leaves: a core running only such threads counts as free
when a pipeline task wakes, as a core of the site's own would leave the pipeline's alone.
Each spike phase also reports the API's answer to a post (202) and the story's published_at
after the post, and how many cores the pipeline and the load generators kept busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("BENCH_PAGES_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_PAGES_CONNECTIONS", "16"))
SPIKE_RATE = float(os.environ.get("BENCH_SPIKE_RATE", "50"))
SPIKE_SECONDS = float(os.environ.get("BENCH_SPIKE_SECONDS", "30"))
SPIKE_READERS = int(os.environ.get("BENCH_SPIKE_READERS", "200"))
SPIKE_BACKEND = os.environ.get("BENCH_SPIKE_BACKEND", "sqlite")
# "separate": the readers read from an API process of their own, as compose.yaml's `site`
# runs them; "shared": from the wire's.
SPIKE_SITE = os.environ.get("BENCH_SPIKE_SITE", "separate")
# The readers' load generator at this lower CPU priority: it stands in for readers elsewhere,
# whose requests cost the pipeline's machine nothing but the serving.
SPIKE_READER_NICE = int(os.environ.get("BENCH_SPIKE_READER_NICE", "19"))
# With BENCH_SPIKE_SITE=separate, the readers' API process at this lower CPU priority: it
# stands in for a site on cores of its own (0: on equal terms with the pipeline).
SPIKE_SITE_NICE = int(os.environ.get("BENCH_SPIKE_SITE_NICE", "19"))
# What is run at a lower priority above also runs SCHED_IDLE ("off": the nice alone).
SPIKE_IDLE = os.environ.get("BENCH_SPIKE_IDLE", "on") != "off"
# Each reader's pause between two pages, in milliseconds (0: as fast as the server answers).
SPIKE_READER_PAUSE_MS = [int(ms) for ms in os.environ.get("BENCH_SPIKE_READER_PAUSE_MS", "100,0").split(",")]
WRK = shutil.which("wrk")


def lower_priority(pid: int, nice: int) -> None:
    """Run ``pid`` at this lower CPU priority (and, with BENCH_SPIKE_IDLE, on spare cycles only).

    Where the kernel groups processes by session (autogroup, on by default on desktops and
    many servers), the scheduler first shares the cores among the sessions' groups and a
    process's own nice counts only inside its group; so the group of the process, which
    must lead a session of its own, gets the nice too.
    """
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:  # no autogroups here: the process's nice is what counts
        pass
    if SPIKE_IDLE:
        for task in Path(f"/proc/{pid}/task").iterdir():  # every thread; later ones inherit it
            run_when_idle(int(task.name))


def run_when_idle(pid: int = 0) -> None:
    """Linux's SCHED_IDLE for a thread (0: the caller): it runs only on cycles nothing else wants,
    and a core running only such threads counts as free when the pipeline's tasks wake."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


# wrk picks each request's path from this list in turn.
WRK_PATHS_SCRIPT = """
paths = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""
# A reader waits this long between pages (wrk's delay()): 0 reads flat out.
WRK_DELAY_SCRIPT = """
delay = function()
  return %d
end
"""


# ---------------------------------------------------------------------------------------------
# Load generators


def _wrk_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return round(value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit], 2)


def wrk(
    base: str,
    paths: list[str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    pause_ms: int = 0,
    nice: int = 0,
) -> dict[str, Any]:
    """Requests/s and latency percentiles from wrk (two threads), over the paths in turn, each
    connection pausing ``pause_ms`` between requests, at ``nice`` (a lower CPU priority)."""
    assert WRK is not None
    command = [WRK, "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_PATHS_SCRIPT % ", ".join(f'"{path}"' for path in paths))
        if pause_ms:
            script.write(WRK_DELAY_SCRIPT % pause_ms)
    try:
        # A session of its own: its priority can then be lowered apart from this process's.
        with subprocess.Popen(
            [*command, "-s", script.name, base],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            # wrk's threads start at once: they take SCHED_IDLE from the process, set before exec.
            preexec_fn=run_when_idle if nice and SPIKE_IDLE else None,
        ) as process:
            if nice:
                lower_priority(process.pid, nice)
            output, errors_out = process.communicate(timeout=seconds + 60)
        if process.returncode:
            raise RuntimeError(f"wrk failed ({process.returncode}): {errors_out.strip()}")
    finally:
        os.unlink(script.name)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    result: dict[str, Any] = {
        "requests_per_second": round(float(rate.group(1))) if rate else None,
        "p50_ms": _wrk_duration_ms(percentiles.get("50", "")),
        "p99_ms": _wrk_duration_ms(percentiles.get("99", "")),
    }
    if non_2xx:
        result["non_2xx_3xx"] = int(non_2xx.group(1))
    if errors:
        result["socket_errors"] = errors.group(1).strip()
    return result


async def _client(
    port: int,
    requests: list[bytes],
    stop: float,
    latencies: list[float],
    statuses: dict[int, int],
    pause: float = 0.0,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.perf_counter() < stop:
            if pause and n:
                await asyncio.sleep(pause)
            started = time.perf_counter()
            writer.write(requests[n % len(requests)])
            n += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def _client_process(
    port: int, requests: list[bytes], connections: int, seconds: float, out: Any, pause: float, nice: int
) -> None:
    if nice:
        os.setsid()  # a session of its own, whose priority is lowered apart from the parent's
        lower_priority(os.getpid(), nice)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> None:
        stop = time.perf_counter() + seconds
        await asyncio.gather(
            *(_client(port, requests, stop, latencies, statuses, pause) for _ in range(connections))
        )

    asyncio.run(main())
    out.put((latencies, statuses))


def clients(
    base: str,
    paths: list[str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    pause_ms: int = 0,
    nice: int = 0,
) -> dict[str, Any]:
    """The same measurement as ``wrk`` from several client processes (when wrk is missing)."""
    port = int(base.rsplit(":", 1)[1].rstrip("/"))
    requests = []
    for path in paths:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    processes = max(1, min(4, connections))
    queue: Any = multiprocessing.get_context("spawn").Queue()
    workers = [
        multiprocessing.get_context("spawn").Process(
            target=_client_process,
            args=(
                port,
                requests,
                connections // processes + (n < connections % processes),
                seconds,
                queue,
                pause_ms / 1000,
                nice,
            ),
        )
        for n in range(processes)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    for _ in workers:
        got, counts = queue.get(timeout=seconds + 60)
        latencies += got
        for status, count in counts.items():
            statuses[status] = statuses.get(status, 0) + count
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return {
        "requests_per_second": round(len(latencies) / elapsed),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "statuses": statuses,
    }


def measure(
    base: str,
    paths: list[str],
    *,
    connections: int = CONNECTIONS,
    seconds: float = SECONDS,
    headers: dict[str, str] | None = None,
    pause_ms: int = 0,
    nice: int = 0,
) -> dict[str, Any]:
    """Load on the paths (in turn) with whichever generator is available."""
    generator = wrk if WRK else clients
    return generator(
        base, paths, connections=connections, seconds=seconds, headers=headers, pause_ms=pause_ms, nice=nice
    )


def refused(result: dict[str, Any]) -> int:
    """How many answers were neither 2xx nor 3xx (a rate measured on refusals is no rate)."""
    if "statuses" in result:
        return sum(count for status, count in result["statuses"].items() if not 200 <= int(status) < 400)
    return int(result.get("non_2xx_3xx", 0))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of seconds, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000, 2)


# ---------------------------------------------------------------------------------------------
# Serving: the demo's stories under `newsroom up`


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _quiet(pid: int, *, window: float = 1.0, share: float = 0.1) -> bool:
    """Whether a process and its children used under ``share`` of a core over ``window`` seconds."""
    from bench.cpu import tree_seconds

    before = tree_seconds(pid)
    time.sleep(window)
    return tree_seconds(pid) - before < share * window


def _wait(predicate: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def serving() -> dict[str, Any]:
    """`newsroom up --demo`, then each path under the same load, one after another."""
    data_dir = Path(tempfile.mkdtemp(prefix="newsroom-bench-pages-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    from tests.helpers.support import GENEROUS_LIMITS

    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSROOM_")}
    env.update(
        {"NEWSROOM_DATA_DIR": str(data_dir), "NEWSROOM_SITE_URL": base, "NEWSROOM_LOG_LEVEL": "WARNING"}
    )
    # Every request comes from one address here, where readers come from many: the per-address
    # limit would answer nearly all of them with 429, and measure the refusals.
    env.update(GENEROUS_LIMITS)
    command = [sys.executable, "-m", "services.cli", "up", "--demo", "--port", str(port)]
    with open(data_dir / "up.log", "ab") as log:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    http = httpx.Client(base_url=base, timeout=30)
    try:
        # The demo prints its URLs once every story is published and in the feeds.
        _wait(
            lambda: "Front page" in (data_dir / "up.log").read_text(errors="replace"),
            timeout=180,
            what=f"the demo; see {data_dir}/up.log",
        )
        # The demo's last deliveries and renders finish before anything is measured.
        _wait(lambda: _quiet(process.pid), timeout=60, what="`newsroom up` to go quiet after the demo")
        front = http.get("/")
        stories = re.findall(r'href="(/stories/[^"]+)"', front.text)
        tags = re.findall(r'href="(/tags/[^"]+)"', http.get(stories[0]).text) if stories else []
        feed = http.get("/feeds/all.atom")
        etag = feed.headers["etag"]
        results: dict[str, Any] = {
            "generator": "wrk -t2" if WRK else "client processes",
            "connections": CONNECTIONS,
            "seconds": SECONDS,
            "stories": len(re.findall(r"<entry>", feed.text)),
            "feed_bytes": len(feed.content),
            "front_bytes": len(front.content),
        }
        paths: dict[str, tuple[str, dict[str, str] | None]] = {
            "feed_all_atom_200": ("/feeds/all.atom", None),
            "feed_all_atom_304": ("/feeds/all.atom", {"If-None-Match": etag}),
            "front_page": ("/", None),
            "story_page": (stories[0], None),
        }
        if front.headers.get("etag"):
            paths["front_page_304"] = ("/", {"If-None-Match": front.headers["etag"]})
        if tags:
            paths["tag_page"] = (tags[0], None)
        paths["news_sitemap"] = ("/sitemaps/news.xml", None)
        for name, (path, headers) in paths.items():
            run = measure(base, [path], headers=headers)
            results[name] = {"path": path, **run, "refused": refused(run)}
        feed_rate = results["feed_all_atom_200"]["requests_per_second"] or 1
        checks = {}
        for name in ("front_page", "story_page"):
            ratio = (results[name]["requests_per_second"] or 0) / feed_rate
            checks[f"{name}_over_feed_rate"] = round(ratio, 2)
            checks[f"{name}_meets_target"] = (
                ratio >= 0.5 and results[name]["p99_ms"] < 5 and not results[name]["refused"]
            )
        results["targets"] = checks
        return results
    finally:
        http.close()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# A spike beside the pipeline


class Readers:
    """SPIKE_READERS concurrent readers on `/` and story pages, until stopped."""

    def __init__(self, base: str, paths: list[str], *, seconds: float, pause_ms: int) -> None:
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(base, paths, seconds, pause_ms), daemon=True)
        self.thread.start()

    def _run(self, base: str, paths: list[str], seconds: float, pause_ms: int) -> None:
        self.result = measure(
            base, paths, connections=SPIKE_READERS, seconds=seconds, pause_ms=pause_ms, nice=SPIKE_READER_NICE
        )

    def join(self) -> dict[str, Any]:
        self.thread.join()
        return self.result


class Machine:
    """How busy the machine's cores were during a phase: the pipeline's processes, and the
    benchmark's own (its load generators: the posting threads, the feed watcher and wrk)."""

    def __init__(self, cluster: Any, database_url: str) -> None:
        from bench.pipeline import cpu_parts

        self.parts = cpu_parts(cluster, database_url)

    def measure(self, phase: Any) -> dict[str, Any]:
        from bench.cpu import CpuMeter, runqueue_seconds

        meter = CpuMeter(self.parts)
        meter.start()
        pids = list(self.parts.values())
        waited = runqueue_seconds(pids)
        own = os.times()
        started = time.monotonic()
        result: dict[str, Any] = phase()
        elapsed = time.monotonic() - started
        pipeline = meter.stop(1)  # milliseconds over the phase
        waited = runqueue_seconds(pids) - waited
        after = os.times()
        bench = sum(after[:4]) - sum(own[:4])  # this process and its reaped children (wrk)
        result["cores_busy"] = {
            "pipeline": round(pipeline["total"] / 1000 / elapsed, 2),
            "load_generators": round(bench / elapsed, 2),
            "of": os.cpu_count(),
            # Seconds per second the pipeline's threads were ready to run but had no core.
            "pipeline_waiting_for_a_core": round(waited / elapsed, 2),
        }
        return result


def spike() -> dict[str, Any]:
    """Wire -> feed latency at SPIKE_RATE posts/s, without readers and then with them."""
    from bench.pipeline import drop_databases, postgres_url, steady
    from services.ingest.service import add_source
    from shared.db import session_scope
    from shared.migrate import upgrade
    from tests.helpers.cluster import Cluster
    from tests.helpers.support import newsroom_environment

    directory = Path(tempfile.mkdtemp(prefix="newsroom-bench-spike-"))
    url = f"sqlite:///{directory / 'newsroom.db'}" if SPIKE_BACKEND == "sqlite" else postgres_url()
    if url is None:
        return {"skipped": "no PostgreSQL server"}
    cluster = Cluster(directory, url)
    cluster.env.update({"NEWSROOM_LOG_LEVEL": "WARNING", "NEWSROOM_OUTBOX_LEASE": "120"})
    results: dict[str, Any] = {
        "backend": SPIKE_BACKEND,
        "rate_per_s": SPIKE_RATE,
        "seconds": SPIKE_SECONDS,
        "readers": SPIKE_READERS,
        "generator": "wrk -t2" if WRK else "client processes",
    }
    try:
        with newsroom_environment(cluster.env):
            upgrade()
            cluster.start_all()
            with session_scope() as session:
                source, token = add_source(session, name=f"spike-{secrets.token_hex(3)}", auto_publish=True)
                name = source.name
            machine = Machine(cluster, url)
            results["without_readers"] = machine.measure(
                lambda: steady(cluster, name, token, rate=SPIKE_RATE, seconds=SPIKE_SECONDS)
            )
            front = cluster.http.get("/")
            stories = list(dict.fromkeys(re.findall(r'href="(/stories/[^"]+)"', front.text)))[:20]
            # Half the readers' requests go to the front page, the rest to the newest stories.
            paths = [path for story in stories for path in ("/", story)]
            base = str(cluster.http.base_url).rstrip("/")
            if SPIKE_SITE == "separate":
                # The readers' own API process (as a site behind its own address would run),
                # beside the one that takes the wire's posts.
                port = _free_port()
                cluster.start("site", "api", "--port", str(port))
                if SPIKE_SITE_NICE:
                    lower_priority(cluster.processes["site"].pid, SPIKE_SITE_NICE)
                base = f"http://127.0.0.1:{port}"
                _wait(lambda: _answers(base), timeout=30, what="the readers' API process")
            results["readers_api"] = SPIKE_SITE
            results["readers_nice"] = SPIKE_READER_NICE
            results["site_nice"] = SPIKE_SITE_NICE if SPIKE_SITE == "separate" else None
            results["sched_idle"] = SPIKE_IDLE
            for pause_ms in SPIKE_READER_PAUSE_MS:
                readers = Readers(base, paths, seconds=SPIKE_SECONDS + 10, pause_ms=pause_ms)
                time.sleep(2)  # the readers are at full speed before the posts begin

                def with_readers(readers: Readers = readers) -> dict[str, Any]:
                    result = steady(cluster, name, token, rate=SPIKE_RATE, seconds=SPIKE_SECONDS)
                    # wrk's time is counted once it is reaped, when the readers end.
                    result["readers"] = readers.join()
                    return result

                beside = machine.measure(with_readers)
                read = beside.pop("readers")
                read["refused"] = refused(read)
                results[f"readers_pausing_{pause_ms}ms"] = {"wire_to_feed": beside, "readers_on_pages": read}
            # Once more without readers: the machine is shared, and this brackets the runs above.
            again = machine.measure(
                lambda: steady(cluster, name, token, rate=SPIKE_RATE, seconds=SPIKE_SECONDS)
            )
            results["without_readers_again"] = again
            cluster.stop_all()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        drop_databases()
    alone = max(results["without_readers"]["p99_ms"], results["without_readers_again"]["p99_ms"])
    for pause_ms in SPIKE_READER_PAUSE_MS:
        run = results[f"readers_pausing_{pause_ms}ms"]
        beside = run["wire_to_feed"]["p99_ms"]
        run["side_by_side"] = {
            "pages_p99_ms": run["readers_on_pages"].get("p99_ms"),
            "pages_requests_per_second": run["readers_on_pages"].get("requests_per_second"),
            "wire_to_feed_p99_ms_without_readers": alone,
            "wire_to_feed_p99_ms_with_readers": beside,
            "slowdown": round(beside / max(alone, 1e-9) - 1, 3),
            "meets_target": beside <= alone * 1.2,
        }
    return results


def run() -> dict[str, Any]:
    """Serving rates of pages beside feeds, and a reader spike beside the pipeline."""
    return {"serving": serving(), "spike": spike()}


if __name__ == "__main__":
    import json

    parts = sys.argv[1:] or ["serving", "spike"]
    print(json.dumps({part: globals()[part]() for part in parts}, indent=2))


def table(results: dict[str, Any]) -> str:
    """The serving rates and the spike, as tables."""
    rows = [
        "| path | requests/s | p50 ms | p99 ms | answers neither 2xx nor 3xx |",
        "| --- | --- | --- | --- | --- |",
    ]
    serving_results = results.get("serving", {})
    for name, run in serving_results.items():
        if isinstance(run, dict) and "requests_per_second" in run:
            rows.append(
                f"| {name} `{run['path']}` | {run['requests_per_second']} "
                f"| {run['p50_ms']} | {run['p99_ms']} | {run.get('refused', '-')} |"
            )
    for name, holds in (serving_results.get("targets") or {}).items():
        rows.append(f"| target {name} | {holds} | | | |")
    spiked = results.get("spike", {})
    rows += [
        "",
        f"Spike: {spiked.get('readers')} readers beside {spiked.get('rate_per_s')} posts/s "
        f"({spiked.get('backend')})",
        "",
        "| phase | wire -> feed p50 / p95 / p99 ms | pages req/s (neither 2xx nor 3xx) | pages p99 ms "
        "| cores busy: pipeline + load generators | pipeline's threads waiting for a core (s/s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    phases = [("without_readers", "no readers")]
    phases += [(f"readers_pausing_{ms}ms", f"readers pausing {ms} ms") for ms in SPIKE_READER_PAUSE_MS]
    phases += [("without_readers_again", "no readers, again")]
    for key, label in phases:
        phase = spiked.get(key)
        if not isinstance(phase, dict):
            continue
        wire = phase.get("wire_to_feed", phase)
        read = phase.get("readers_on_pages", {})
        refusals = f" ({read['refused']})" if "refused" in read else ""
        busy = wire.get("cores_busy", {})
        rows.append(
            f"| {label} | {wire['p50_ms']} / {wire['p95_ms']} / {wire['p99_ms']} "
            f"| {read.get('requests_per_second', '')}{refusals} "
            f"| {read.get('p99_ms', '')} "
            f"| {busy.get('pipeline', '-')} + {busy.get('load_generators', '-')} of {busy.get('of', '-')} "
            f"| {busy.get('pipeline_waiting_for_a_core', '-')} |"
        )
        side = phase.get("side_by_side")
        if side:
            rows.append(f"| slowdown of wire -> feed p99 (target <= 0.2) | {side['slowdown']} | | | | |")
    return "\n".join(rows)
