"""The `newsroom` command: run the parts, and do what editors and admins do."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import tasknames
from shared.errors import NewsroomError
from shared.logs import events_held, hold_events, log_file, setup_logging

log = logging.getLogger("newsroom")

QUEUES = ",".join(tasknames.QUEUES)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# --- running the parts -------------------------------------------------------------------


def cmd_db_upgrade(_args: argparse.Namespace) -> None:
    from shared.migrate import upgrade

    upgrade()
    print("database is up to date")


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from shared.httpserver import HTTP_PROTOCOL
    from shared.redis import redis_url

    redis_url()
    uvicorn.run(
        "services.app:app",
        host=args.host,
        port=args.port,
        http=HTTP_PROTOCOL,
        log_level="info",
        log_config=None,
        proxy_headers=True,
        access_log=False,
        workers=args.workers,
    )


def cmd_worker(args: argparse.Namespace) -> None:
    from shared import celery

    if args.pool == "solo" and args.concurrency > 1:
        _supervise_workers(args)
        return
    argv = [
        "worker",
        "-Q",
        args.queues,
        "-P",
        args.pool,
        "--loglevel",
        args.loglevel,
        "-n",
        f"newsroom-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if log_file() is not None:  # under `newsroom up`: no banner on the terminal
        argv.insert(0, "--quiet")
    if args.pool == "solo":
        # A solo worker runs tasks in its main thread, where Celery enforces no time limit.
        celery.enforce_time_limits()
    else:
        argv += ["-c", str(args.concurrency)]
    celery.app.worker_main(argv)


def _supervise_workers(args: argparse.Namespace) -> None:
    """Run ``-c`` single-process workers and restart any that dies.

    A prefork worker's parent passes every message on to a child through a pipe;
    single-process workers each take their messages straight from Redis. On a 2-core
    machine two of them ran an empty three-hop chain at 198-241 chains/s, against
    108-147 for one prefork worker with two processes. They share this process group,
    so stopping the group stops them all.
    """
    import time

    from shared.config import get_settings

    command = [
        sys.executable,
        "-m",
        "services.cli",
        "worker",
        "-Q",
        args.queues,
        "-c",
        "1",
        "-P",
        "solo",
        "--loglevel",
        args.loglevel,
    ]
    children = [subprocess.Popen(command) for _ in range(args.concurrency)]
    stopping = threading.Event()
    received: list[int] = []
    told: set[int] = set()

    def tell_children() -> None:
        for child in children:
            if child.poll() is None and child.pid not in told:
                told.add(child.pid)
                child.send_signal(received[0])

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        stopping.set()
        tell_children()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.wait(0.5):
        for position, child in enumerate(children):
            if child.poll() is not None and not stopping.is_set():
                log.warning("worker process %s exited with %s; starting another", child.pid, child.returncode)
                children[position] = subprocess.Popen(command)
    # A process started while the signal was being handled (the handler runs between two
    # steps of starting it, before it is in the list) is told now.
    tell_children()
    # A warm shutdown lets the running task finish, within its time limit.
    deadline = time.monotonic() + get_settings().task_time_limit + 5
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def cmd_scheduler(_args: argparse.Namespace) -> None:
    from shared import scheduler
    from shared.redis import redis_url

    redis_url()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        scheduler.run(stop)
    except KeyboardInterrupt:
        pass


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_up(args: argparse.Namespace) -> None:
    import time

    import uvicorn

    from shared import scheduler
    from shared.config import get_settings, reset_settings
    from shared.egress import redact_url
    from shared.httpserver import HTTP_PROTOCOL
    from shared.migrate import upgrade
    from shared.redis import redis_url

    if args.demo:
        from services.demo import RECEIVER_ALLOW

        # The demo's partner is a loopback receiver: this process and the worker may reach
        # exactly its address, besides whatever the operator allowed.
        allowed = os.environ.get("NEWSROOM_OUTBOUND_ALLOW", "")
        os.environ["NEWSROOM_OUTBOUND_ALLOW"] = ",".join(part for part in (allowed, RECEIVER_ALLOW) if part)
        reset_settings()
    settings = get_settings()
    started = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    quiet = log_file() is not None
    _print_summary(args, quiet=quiet)
    url = redis_url()
    log.info("redis: %s", redact_url(url))
    upgrade()
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "-Q", QUEUES, "-c", str(args.concurrency)],
        env={**os.environ, "NEWSROOM_REDIS_URL": url},
        start_new_session=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
    )
    if worker.stdout is not None:
        threading.Thread(
            target=_relay_worker_output, args=(worker.stdout,), name="worker-output", daemon=True
        ).start()
    stop = threading.Event()
    ticker = threading.Thread(target=scheduler.run, args=(stop,), name="scheduler", daemon=True)
    ticker.start()
    config = uvicorn.Config(
        "services.app:app",
        host=args.host,
        port=args.port,
        http=HTTP_PROTOCOL,
        log_level="warning",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    if args.demo:
        from services.demo import run_demo

        base = f"http://{args.host}:{args.port}"
        hold_events(True)
        threading.Thread(target=run_demo, args=(base, server, started), name="demo", daemon=True).start()
    else:
        threading.Thread(target=_say_ready, args=(server, started), name="ready", daemon=True).start()
    # uvicorn re-raises the signal that stopped it; SIGTERM's default action would
    # end this process before the worker is stopped below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping: the worker finishes its tasks, then Redis stops", flush=True)
        stop.set()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=settings.task_time_limit + 10)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        log.info("newsroom stopped")
        print("stopped", flush=True)


def _print_summary(args: argparse.Namespace, *, quiet: bool) -> None:
    """What `newsroom up` is about to start, in a few lines a person reads."""
    from sqlalchemy.engine import make_url

    from shared.config import get_settings

    settings = get_settings()
    database = make_url(settings.sqlalchemy_url)
    where = database.database if database.get_backend_name() == "sqlite" else database.host
    redis_where = "external" if settings.redis_url else f"embedded, under {settings.data_dir / 'redis'}"
    lines = [
        "Newsroom: API, worker and scheduler on this machine",
        f"  database  {database.get_backend_name()} ({where})",
        f"  redis     {redis_where}",
        f"  worker    {args.concurrency} processes on queues {QUEUES}",
        f"  api       http://{args.host}:{args.port}",
    ]
    if quiet:
        lines.append(f"  full log  {log_file()} (newsroom up -v shows it here)")
    print("\n".join(lines), flush=True)


def _say_ready(server: Any, started: float) -> None:
    import time

    while not getattr(server, "started", False):
        time.sleep(0.05)
    print(f"ready in {time.monotonic() - started:.1f}s; Ctrl-C stops everything", flush=True)


def _relay_worker_output(stream: Any) -> None:
    """Pass the worker's terminal lines on; while the demo runs, its own progress stands for them."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        if not line or line.startswith("worker: Warm shutdown"):
            continue  # Celery's own farewell, once per process; `up` says it stops
        if events_held() and _is_event_line(line):
            continue  # in the full log; the demo prints its progress instead
        print(line, flush=True)


def _is_event_line(line: str) -> bool:
    """A terminal line of an INFO event ("HH:MM:SS  story 3 published ..."), not a warning."""
    head, _, rest = line.partition("  ")
    return (
        len(head) == 8
        and head[2] == ":"
        and head[5] == ":"
        and not rest.startswith(("WARNING", "ERROR", "CRITICAL"))
    )


def cmd_health(args: argparse.Namespace) -> None:
    """Exit 0 when this host's part answers: the API's /readyz, or a fresh heartbeat."""
    if args.part == "api":
        import httpx

        try:
            answer = httpx.get(f"http://{args.host}:{args.port}/readyz", timeout=5)
        except httpx.HTTPError as error:
            raise SystemExit(f"api: no answer on {args.host}:{args.port}: {error}") from error
        if answer.status_code != 200:
            raise SystemExit(f"api: /readyz answered {answer.status_code}: {answer.text[:200]}")
        print(f"api: ready ({answer.text.strip()})")
        return
    from shared.health import beating

    try:
        alive = beating(args.part)
    except Exception as error:
        raise SystemExit(f"{args.part}: Redis does not answer: {error}") from error
    if not alive:
        raise SystemExit(f"{args.part}: no heartbeat from this host")
    ages = ", ".join(f"pid {pid} {age:.0f}s ago" for pid, age in sorted(alive.items()))
    print(f"{args.part}: {len(alive)} alive ({ages})")


# --- editors and admins --------------------------------------------------------------------


def cmd_source_add(args: argparse.Namespace) -> None:
    from services.ingest.service import add_source
    from shared.db import session_scope

    if bool(args.poll) != bool(args.every):
        raise SystemExit("--poll and --every go together")
    with session_scope() as session:
        source, token = add_source(
            session,
            name=args.name,
            format=args.format,
            timezone=args.timezone,
            auto_publish=args.auto_publish,
            poll_url=args.poll,
            poll_every=args.every,
        )
        print(f"source {source.name} (id {source.id}, {source.format})")
    print(f"wire token (shown once): {token}")


def cmd_source_list(args: argparse.Namespace) -> None:
    from services.ingest.service import list_sources, source_view
    from shared.db import session_scope

    with session_scope(read_only=True) as session:
        views = [source_view(source) for source in list_sources(session, failing=args.failing)]
    if args.json:
        _print(views)
        return
    for view in views:
        poll = f"every {view['poll_every']}s {view['poll_url']}" if view["poll_url"] else "push"
        # A source whose polls keep failing says so, with why and when it tries again.
        health = (
            f"FAILING x{view['poll_failures']} (next {view['next_poll_at']}): {view['last_error']}"
            if view["failing"]
            else "ok"
        )
        print(f"{view['id']:>4}  {view['name']:<20} {view['format']:<10} {poll}  {health}")


def _duration(text: str) -> Any:
    """argparse type for durations like 30d, 12h, 90m."""
    from shared.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def cmd_source_state(args: argparse.Namespace) -> None:
    from services.ingest.service import disable_source, enable_source, remove_source
    from shared.db import session_scope

    change = {"disable": disable_source, "enable": enable_source, "remove": remove_source}[
        args.source_command
    ]
    with session_scope() as session:
        source = change(session, name=args.name)
        print(f"source {source.name} (id {source.id}) {args.source_command}d")


def cmd_token_create(args: argparse.Namespace) -> None:
    from shared.auth import create_token
    from shared.db import session_scope

    with session_scope() as session:
        token = create_token(session, role=args.role, name=args.name, expires_in=args.expires)
    print(f"{args.role} token (shown once): {token}")


def cmd_token_list(args: argparse.Namespace) -> None:
    from shared.auth import list_tokens
    from shared.db import session_scope

    with session_scope(read_only=True) as session:
        views = list_tokens(session)
    if not args.all:
        views = [view for view in views if view["state"] == "active"]
    if args.json:
        _print(views)
        return
    print(f"{'name':<28} {'role':<7} {'state':<8} {'created':<20} {'last used':<20} expires")
    for view in views:
        print(
            f"{view['name']:<28} {view['role']:<7} {view['state']:<8} {_minute(view['created_at']):<20} "
            f"{_minute(view['last_used_at']):<20} {_minute(view['expires_at'])}"
        )


def _minute(moment: str | None) -> str:
    return moment[:16].replace("T", " ") if moment else "-"


def cmd_token_revoke(args: argparse.Namespace) -> None:
    from shared.auth import revoke_tokens
    from shared.db import session_scope

    with session_scope() as session:
        count = revoke_tokens(session, name=args.name)
    print(f"revoked {count} token(s) named {args.name}")


def cmd_partner_add(args: argparse.Namespace) -> None:
    from services.syndicate.partners import add_partner
    from shared.db import session_scope

    with session_scope() as session:
        partner = add_partner(
            session,
            name=args.name,
            url=args.url,
            format=args.format,
            sections=args.section,
            tags=args.tag,
            labels=args.label,
        )
        secret = partner.secret
        print(f"partner {partner.name} (id {partner.id}) -> {partner.url}")
    print(f"signing secret (shown once): {secret}")


def cmd_partner_state(args: argparse.Namespace) -> None:
    from services.syndicate.partners import disable_partner, enable_partner, remove_partner
    from shared.db import session_scope

    change = {"disable": disable_partner, "enable": enable_partner, "remove": remove_partner}[
        args.partner_command
    ]
    with session_scope() as session:
        partner = change(session, name=args.name)
        print(f"partner {partner.name} (id {partner.id}) {args.partner_command}d")


def cmd_partner_rotate_secret(args: argparse.Namespace) -> None:
    from services.syndicate.partners import rotate_secret
    from shared.db import session_scope

    with session_scope() as session:
        secret = rotate_secret(session, name=args.name, grace=args.grace)
    if args.grace:
        print(f"the old secret also signs every push for {args.grace}")
    print(f"signing secret (shown once): {secret}")


def cmd_prune(args: argparse.Namespace) -> None:
    from shared.retention import prune

    counts = prune(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for kind, count in counts.items():
        print(f"{verb} {count} {kind.replace('_', ' ')}")


def cmd_publish(args: argparse.Namespace) -> None:
    from services.publish.api import parse_at, story_view
    from services.publish.service import get_story, publish_story
    from shared.db import session_scope
    from shared.errors import SkipEvent

    at = parse_at(args.at)
    try:
        with session_scope() as session:
            outcome = publish_story(
                session,
                story_id=args.id,
                actor=args.actor,
                labels=args.label,
                at=at,
                expected_version=args.expected_version,
                silent=args.silent,
                note=args.note,
            )
            view = {**story_view(outcome.story), "event": outcome.event}
    except SkipEvent as skip:
        with session_scope(read_only=True) as session:
            view = {**story_view(get_story(session, args.id)), "event": None, "detail": skip.detail}
    _print(view)


def cmd_unpublish(args: argparse.Namespace) -> None:
    from services.publish.api import story_view
    from services.publish.service import unpublish_story
    from shared.db import session_scope

    with session_scope() as session:
        outcome = unpublish_story(
            session,
            story_id=args.id,
            reason=args.reason,
            actor=args.actor,
            expected_version=args.expected_version,
        )
        view = {**story_view(outcome.story), "event": outcome.event}
    _print(view)


def cmd_stories_list(args: argparse.Namespace) -> None:
    from services.publish.api import story_view
    from services.publish.service import list_stories
    from shared.config import get_settings
    from shared.db import session_scope
    from shared.timefmt import local

    tz = get_settings().tz
    with session_scope(read_only=True) as session:
        stories = list_stories(
            session, status=args.status, section=args.section, q=args.q, limit=args.limit, offset=args.offset
        )
        if args.json:
            _print([story_view(story) for story in stories])
            return
        for story in stories:
            # Editors read times in the newsroom's zone, as readers see them.
            moment = story.publish_at if story.status == "scheduled" else story.published_at
            when = local(moment, tz).strftime("%Y-%m-%d %H:%M") if moment else "-"
            labels = ",".join(story.label_names) or "-"
            print(
                f"{story.id:>6}  {story.status:<11} v{story.revision:<3} {when:<16} {labels:<16} "
                f"{story.headline}"
            )


def cmd_ingest(args: argparse.Namespace) -> None:
    import time

    from sqlalchemy import select

    from services.ingest import service
    from services.ingest.api import receipt_view
    from shared.db import session_scope
    from shared.models import Receipt, Source

    if args.retry is not None:
        with session_scope() as session:
            receipt = service.retry_receipt(session, args.retry)
            receipt_id = receipt.id
        print(f"receipt {receipt_id} queued again")
        status = 202
    else:
        if not args.file or not args.source:
            raise SystemExit("usage: newsroom ingest FILE --source NAME, or newsroom ingest --retry RECEIPT")
        body = Path(args.file).read_bytes()
        with session_scope() as session:
            source = session.scalars(select(Source).where(Source.name == args.source)).first()
            if source is None:
                raise SystemExit(f"no source {args.source!r}")
            result = service.accept_post(
                session, source=source, content_type=args.content_type or _guess_type(args.file), body=body
            )
            receipt_id, status = result.receipt_id, result.status
    deadline = time.monotonic() + args.wait
    while True:
        with session_scope(read_only=True) as session:
            view = receipt_view(session.get_one(Receipt, receipt_id))
        if view["status"] != "pending" or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    _print({"http_status": status, **view})
    if status != 202:
        raise SystemExit(1)


def _guess_type(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    return {
        ".json": None,
        ".xml": "application/xml",
        ".rss": "application/rss+xml",
        ".atom": "application/atom+xml",
    }.get(suffix)


def cmd_feeds_export(args: argparse.Namespace) -> None:
    from services.syndicate.service import export_feeds

    written = export_feeds(Path(args.dir))
    print(f"wrote {len(written)} files under {args.dir}")


def cmd_deliveries_list(args: argparse.Namespace) -> None:
    from services.syndicate.api import list_deliveries

    deliveries = list_deliveries(
        partner=args.partner, status=args.status, story_id=args.story, limit=args.limit
    )
    if args.json:
        _print(deliveries)
        return
    for view in deliveries:
        print(
            f"{view['id']}  {view['partner']:<16} story {view['story_id']:<6} v{view['version']:<3} "
            f"{view['event']:<16} {view['status']:<10} attempts={view['attempts']} "
            f"{view['last_error'] or ''}"
        )


def cmd_deliveries_replay(args: argparse.Namespace) -> None:
    from services.syndicate.partners import replay
    from shared.db import session_scope

    if bool(args.id) == bool(args.partner):
        raise SystemExit("replay needs a delivery ID or --partner P (not both)")
    if args.id and args.status:
        raise SystemExit("--status goes with --partner")
    with session_scope() as session:
        ids = replay(session, delivery_id=args.id, partner=args.partner, status=args.status)
    print(f"queued {len(ids)} deliveries again: {' '.join(ids)}")


# --- the parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="newsroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="API, workers and scheduler on one machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--demo", action="store_true", help="create sample sources, stories and a partner")
    up.add_argument("-c", "--concurrency", type=int, default=4)
    up.add_argument("-v", "--verbose", action="store_true", help="the full log on the terminal")
    up.set_defaults(func=cmd_up)

    api = commands.add_parser("api", help="the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("-w", "--workers", type=int, default=1, help="API processes on this port")
    api.set_defaults(func=cmd_api)

    worker = commands.add_parser("worker", help="a Celery worker")
    worker.add_argument("-Q", "--queues", default=QUEUES)
    worker.add_argument("-c", "--concurrency", type=int, default=2, help="worker processes")
    worker.add_argument(
        "-P",
        "--pool",
        default="solo",
        choices=["solo", "prefork"],
        help="solo: one process per -c, each taking its own messages (the default)",
    )
    worker.add_argument(
        "--loglevel",
        default=os.environ.get("NEWSROOM_LOG_LEVEL", "INFO"),
        help="default: NEWSROOM_LOG_LEVEL, else INFO",
    )
    worker.set_defaults(func=cmd_worker)

    commands.add_parser("scheduler", help="the scheduler loop").set_defaults(func=cmd_scheduler)

    health = commands.add_parser("health", help="exit 0 when this host's api, worker or scheduler is alive")
    health.add_argument("part", choices=["api", "worker", "scheduler"])
    health.add_argument("--host", default="127.0.0.1", help="the API's address (api only)")
    health.add_argument("--port", type=int, default=8000, help="the API's port (api only)")
    health.set_defaults(func=cmd_health)

    db = commands.add_parser("db", help="the schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or migrate the schema").set_defaults(func=cmd_db_upgrade)

    source = commands.add_parser("source", help="wire sources").add_subparsers(
        dest="source_command", required=True
    )
    add = source.add_parser("add", help="add a source and print its wire token")
    add.add_argument("name")
    add.add_argument("--format", default="ninjs", choices=["ninjs", "newsml-g2", "rss", "atom", "column"])
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--auto-publish", action="store_true")
    add.add_argument("--poll", metavar="URL")
    add.add_argument("--every", type=int, metavar="SECONDS")
    add.set_defaults(func=cmd_source_add)
    slist_sources = source.add_parser("list", help="sources, and whether their polls are failing")
    slist_sources.add_argument("--failing", action="store_true", help="only sources whose polls fail")
    slist_sources.add_argument("--json", action="store_true")
    slist_sources.set_defaults(func=cmd_source_list)
    for action, about in (
        ("disable", "refuse its posts (403) and stop polling it"),
        ("enable", "take its posts and poll it again"),
        ("remove", "disable it for good and revoke its tokens; its receipts and stories stay"),
    ):
        state = source.add_parser(action, help=about)
        state.add_argument("name")
        state.set_defaults(func=cmd_source_state)

    token = commands.add_parser("token", help="tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="create an editor or admin token")
    create.add_argument("--role", required=True, choices=["editor", "admin"])
    create.add_argument("--name", required=True)
    create.add_argument("--expires", type=_duration, metavar="DURATION", help="e.g. 30d, 12h, 90m")
    create.set_defaults(func=cmd_token_create)
    tlist = token.add_parser("list", help="tokens: name, role, created, last used, expiry (never the token)")
    tlist.add_argument("--all", action="store_true", help="revoked and expired tokens too")
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_token_list)
    revoke = token.add_parser("revoke", help="revoke every live token of this name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)

    partner = commands.add_parser("partner", help="partners").add_subparsers(
        dest="partner_command", required=True
    )
    padd = partner.add_parser("add", help="add a partner and print its signing secret")
    padd.add_argument("name")
    padd.add_argument("--url", required=True)
    padd.add_argument("--format", default="ninjs")
    padd.add_argument("--section", action="append", default=[])
    padd.add_argument("--tag", action="append", default=[])
    padd.add_argument("--label", action="append", default=[])
    padd.set_defaults(func=cmd_partner_add)
    for action, about in (
        ("disable", "stop pushing; its pending deliveries are dead (replayable)"),
        ("enable", "push again from the next change on"),
        ("remove", "disable it for good; its deliveries stay as history"),
    ):
        state = partner.add_parser(action, help=about)
        state.add_argument("name")
        state.set_defaults(func=cmd_partner_state)
    rotate = partner.add_parser("rotate-secret", help="a new signing secret, printed once")
    rotate.add_argument("name")
    rotate.add_argument(
        "--grace",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="the old secret also signs every push this long (e.g. 1h)",
    )
    rotate.set_defaults(func=cmd_partner_rotate_secret)

    prune = commands.add_parser("prune", help="remove what the retention policy says is old")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    prune.set_defaults(func=cmd_prune)

    publish = commands.add_parser("publish", help="publish, schedule or republish a story")
    publish.add_argument("id", type=int)
    publish.add_argument("--label", action="append", help="exclusive or breaking; repeat for both")
    publish.add_argument("--at", help="ISO 8601 time with an offset: future schedules, past backdates")
    publish.add_argument("--silent", action="store_true", help="a typo fix: no 'updated' label")
    publish.add_argument("--note", help="a public correction note")
    publish.add_argument("--expected-version", type=int)
    publish.add_argument("--actor", default="cli", help="who, for the revision history")
    publish.set_defaults(func=cmd_publish)

    unpublish = commands.add_parser("unpublish", help="take a story down everywhere")
    unpublish.add_argument("id", type=int)
    unpublish.add_argument("--reason", required=True)
    unpublish.add_argument("--expected-version", type=int)
    unpublish.add_argument("--actor", default="cli", help="who, for the revision history")
    unpublish.set_defaults(func=cmd_unpublish)

    stories = commands.add_parser("stories", help="stories").add_subparsers(
        dest="stories_command", required=True
    )
    slist = stories.add_parser("list", help="the editor's list, newest first")
    slist.add_argument("--status", choices=["ingested", "scheduled", "published", "unpublished"])
    slist.add_argument("--section")
    slist.add_argument("-q", help="text in the headline, lede, body, author or guid")
    slist.add_argument("--limit", type=int, default=50)
    slist.add_argument("--offset", type=int, default=0)
    slist.add_argument("--json", action="store_true")
    slist.set_defaults(func=cmd_stories_list)

    ingest = commands.add_parser("ingest", help="post a local file, or reprocess a stored post")
    ingest.add_argument("file", nargs="?")
    ingest.add_argument("--source")
    ingest.add_argument("--content-type")
    ingest.add_argument("--retry", type=int, metavar="RECEIPT")
    ingest.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for the worker and show what became of each item",
    )
    ingest.set_defaults(func=cmd_ingest)

    feeds = commands.add_parser("feeds", help="feeds").add_subparsers(dest="feeds_command", required=True)
    export = feeds.add_parser("export", help="write every feed as files")
    export.add_argument("dir")
    export.set_defaults(func=cmd_feeds_export)

    deliveries = commands.add_parser("deliveries", help="partner deliveries").add_subparsers(
        dest="deliveries_command", required=True
    )
    dlist = deliveries.add_parser("list", help="deliveries, newest first")
    dlist.add_argument("--status", choices=["pending", "sent", "dead", "superseded"])
    dlist.add_argument("--partner")
    dlist.add_argument("--story", type=int, metavar="STORY_ID")
    dlist.add_argument("--limit", type=int, default=100)
    dlist.add_argument("--json", action="store_true", help="print JSON, as GET /v1/deliveries does")
    dlist.set_defaults(func=cmd_deliveries_list)
    replay = deliveries.add_parser("replay", help="send deliveries again, with the same webhook-id")
    replay.add_argument("id", nargs="?")
    replay.add_argument("--partner")
    replay.add_argument("--status", choices=["pending", "sent", "dead", "superseded"])
    replay.set_defaults(func=cmd_deliveries_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `newsroom` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "up" and not args.verbose and "NEWSROOM_LOG_LEVEL" not in os.environ:
        from shared.config import get_settings

        # The terminal shows what a person follows; every process of `up` logs in full here.
        full_log = (get_settings().data_dir / "logs" / "newsroom.log").resolve()
        os.environ.setdefault("NEWSROOM_LOG_FILE", str(full_log))
    setup_logging()
    try:
        args.func(args)
    except NewsroomError as error:
        print(f"error: {error.detail}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
