"""WebSub end to end: `newsroom up` with two hubs on loopback.

Each hub is a small real HTTP server that, like a real hub (Flask-WebSub, Google's), takes
``hub.mode=publish`` pings, then fetches the topic and refuses it unless its Link header names
the hub (rel="hub") and the topic itself (rel="self"). The whole product runs as one
`newsroom up` process, so the feeds' self links are real loopback URLs the hubs can fetch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import feedparser  # type: ignore[import-untyped]
import httpx
import pytest
from lxml import etree  # type: ignore[import-untyped]

from tests.helpers.support import GENEROUS_LIMITS, LOOPBACK_ALLOW, ROOT, free_port, wait_for

pytestmark = pytest.mark.pipeline

LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([^";,]+)"?')


@dataclass
class Ping:
    topic: str
    url: str | None
    status: int | None
    links: list[tuple[str, str]]
    body: bytes
    error: str | None


class LoopbackHub:
    """A WebSub hub that records publish pings and checks each topic as a real hub does."""

    def __init__(self) -> None:
        self.pings: list[Ping] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("content-length", 0))).decode())
                mode = form.get("hub.mode", [""])[0]
                topic = form.get("hub.topic", form.get("hub.url", [""]))[0]
                ping = hub.check(topic, form.get("hub.url", [None])[0]) if mode == "publish" else None
                ok = ping is not None and ping.error is None
                reason = b"" if ok else (ping.error if ping else f"mode {mode!r}").encode()
                self.send_response(202 if ok else 400)
                self.send_header("Content-Length", str(len(reason)))
                self.end_headers()
                self.wfile.write(reason)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hub"

    def check(self, topic: str, url: str | None) -> Ping:
        """Fetch the topic; a hub delivers nothing unless the Link header names it and the topic."""
        status, links, body, error = None, [], b"", None
        try:
            response = httpx.get(topic, timeout=10)
            status, body = response.status_code, response.content
            links = [(rel, href) for href, rel in LINK.findall(response.headers.get("link", ""))]
            if status != 200:
                error = f"topic answered {status}"
            elif ("hub", self.url) not in links or ("self", topic) not in links:
                error = f"Link header lacks rel=hub {self.url} or rel=self {topic}: {links}"
        except httpx.HTTPError as failure:
            error = f"topic unreachable: {failure!r}"
        ping = Ping(topic, url, status, links, body, error)
        with self.lock:
            self.pings.append(ping)
        return ping

    def seen(self, topic: str, text: str | None = None) -> list[Ping]:
        with self.lock:
            return [p for p in self.pings if p.topic == topic and (text is None or text.encode() in p.body)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hubs() -> Any:
    pair = [LoopbackHub(), LoopbackHub()]
    yield pair
    for hub in pair:
        hub.close()


@pytest.fixture(scope="module")
def newsroom(hubs: list[LoopbackHub], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`newsroom up` on a free loopback port, its own data dir, embedded Redis and SQLite."""
    data = tmp_path_factory.mktemp("websub")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSROOM_")}
    env.update(
        NEWSROOM_DATA_DIR=str(data),
        NEWSROOM_SITE_URL=base,
        NEWSROOM_LOG_LEVEL="INFO",
        NEWSROOM_OUTBOUND_ALLOW=LOOPBACK_ALLOW,
        NEWSROOM_WEBSUB_HUBS=",".join(hub.url for hub in hubs),
        **GENEROUS_LIMITS,
    )
    log_path = data / "up.log"
    with open(log_path, "ab") as log:
        command = [sys.executable, "-m", "services.cli", "up", "--port", str(port), "-c", "2"]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: _ready(base) or process.poll() is not None, timeout=90, what="newsroom up")
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        yield base, env, log_path
    finally:
        # Ctrl-C: `up` stops its worker, scheduler and embedded Redis itself.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def post_item(base: str, source: str, token: str, **item: Any) -> None:
    document = {
        "type": "text",
        "language": "uk",
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Тіло &amp; більше 🎉</p>"}],
        "by": "Wire desk",
        **item,
    }
    answer = httpx.post(
        f"{base}/v1/wire/{source}",
        content=json.dumps(document),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/ninjs+json"},
    )
    assert answer.status_code == 202, answer.text


def test_every_changed_feed_is_announced_to_every_hub(newsroom: Any, hubs: list[LoopbackHub]) -> None:
    base, env, log_path = newsroom
    out = cli(env, "source", "add", "websub-wire", "--auto-publish")
    token = out.strip().splitlines()[-1].split(": ")[-1]
    headline = "Київ & <Львів>: хаб 🎉"
    post_item(
        base,
        "websub-wire",
        token,
        uri="urn:websub:1",
        version="1",
        headline=headline,
        headlines=[{"role": "main", "value": headline}],
        subjects=[{"name": "Хаб"}],
    )

    topics = [f"{base}/feeds/{name}.{fmt}" for name in ("all", "tag/khab") for fmt in ("rss", "atom", "json")]
    for hub in hubs:
        for topic in topics:
            wait_for(
                lambda hub=hub, topic=topic: hub.seen(topic, "хаб 🎉"),
                timeout=30,
                what=f"a ping of {topic} at {hub.url} ({log_path})",
            )
    for hub in hubs:
        for topic in topics:
            pings = hub.seen(topic)
            assert [p.error for p in pings] == [None] * len(pings)
            assert all(p.url == topic for p in pings)

    # The documents name the hubs and themselves too.
    for topic in topics:
        answer = httpx.get(topic)
        if topic.endswith(".json"):
            document = json.loads(answer.content)
            assert document["feed_url"] == topic
            assert [hub_["url"] for hub_ in document["hubs"]] == [hub.url for hub in hubs]
            continue
        assert feedparser.parse(answer.content).bozo == 0
        atom = "{http://www.w3.org/2005/Atom}"
        root = etree.fromstring(answer.content)
        links = [(link.get("rel"), link.get("href")) for link in root.iter(f"{atom}link")]
        assert ("self", topic) in links
        assert [href for rel, href in links if rel == "hub"] == [hub.url for hub in hubs]

    # An update is announced again, and the hubs fetch the new version.
    updated = f"{headline} (оновлено)"
    post_item(
        base,
        "websub-wire",
        token,
        uri="urn:websub:1",
        version="2",
        headline=updated,
        headlines=[{"role": "main", "value": updated}],
        subjects=[{"name": "Хаб"}],
    )
    for hub in hubs:
        for topic in topics:
            wait_for(
                lambda hub=hub, topic=topic: hub.seen(topic, "(оновлено)"),
                timeout=30,
                what=f"a ping of the update of {topic} at {hub.url}",
            )
    assert Path(log_path).exists()
