"""`newsroom up --demo`: a wire, a columnist, an editor and a partner, end to end."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import httpx
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from services.ingest.service import add_source
from services.syndicate.partners import add_partner
from shared.auth import create_token
from shared.config import get_settings
from shared.db import session_scope
from shared.logs import hold_events
from shared.models import Partner, Source

log = logging.getLogger(__name__)


# The demo partner's receiver listens here; `newsroom up --demo` lets outbound requests
# reach this one address (RECEIVER_ALLOW), and no other non-public one.
RECEIVER_HOST = "127.0.0.1"
RECEIVER_ALLOW = f"{RECEIVER_HOST}/32"


def _data(name: str) -> Any:
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


class DemoPartner:
    """A loopback partner that verifies every push it receives."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        partner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                try:
                    payload = Webhook(partner.secret).verify(body, dict(self.headers.items()))
                except Exception as error:
                    log.warning("demo partner: bad signature: %s", error)
                    self.send_response(400)
                    self.end_headers()
                    return
                partner.received.append(payload)
                log.info(
                    "demo partner <- %s %s (webhook-id %s)",
                    payload["type"],
                    payload["data"]["headlines"][0]["value"],
                    self.headers["webhook-id"],
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((RECEIVER_HOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="demo-partner").start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/newsroom"


def _setup(partner_url: str) -> dict[str, str]:
    """Sources, tokens and the partner; reused when the demo ran before on this data dir."""
    tokens = {}
    with session_scope() as session:
        for name, fmt in (("wire", "ninjs"), ("columns", "column")):
            source = session.scalars(select(Source).where(Source.name == name)).first()
            if source is None:
                source, tokens[name] = add_source(session, name=name, format=fmt, timezone="Europe/Kyiv")
            else:
                tokens[name] = create_token(session, role="wire", name=f"source:{name}", source_id=source.id)
        tokens["editor"] = create_token(session, role="editor", name="demo-editor")
        tokens["admin"] = create_token(session, role="admin", name="demo-admin")
        partner = session.scalars(select(Partner).where(Partner.name == "demo-partner")).first()
        if partner is None:
            partner = add_partner(session, name="demo-partner", url=partner_url)
        partner.url = partner_url
        partner.enabled = True
        tokens["partner_secret"] = partner.secret
    return tokens


def _ninjs(item: dict[str, Any], index: int) -> dict[str, Any]:
    headline = item["headline"]
    return {
        "uri": f"urn:newsroom:demo:wire:{index}",
        "type": "text",
        "version": "1",
        "versioncreated": item["time"],
        "firstcreated": item["time"],
        "language": "en",
        "headlines": [{"role": "main", "value": headline}],
        "descriptions": [{"role": "summary", "value": f"{headline}."}],
        "bodies": [
            {
                "role": "main",
                "contenttype": "text/html",
                "value": f"<p>{headline}.</p><p>Wire copy for the demonstration.</p>",
            }
        ],
        "by": "Newsroom wire desk",
        "subjects": [{"name": "News", "uri": "http://example.org/section/news"}, {"name": "Ukraine"}],
    }


def _column_for(item: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "guid": f"columns/demo/{index}",
        "version": 1,
        "headline": item["headline"],
        "body_html": f"<p>{item['headline']}.</p>",
        "author": {"name": "Newsroom columnist", "bio": "columnist"},
        "section": "opinion",
        "written_at": item["time"],
    }


def _progress(message: str) -> None:
    print(f"demo: {message}", flush=True)


def run_demo(base: str, server: Any, started: float) -> None:
    """Wait for the API, then ingest, publish and show where everything went."""
    try:
        _run_demo(base, server, started)
    finally:
        hold_events(False)


def _run_demo(base: str, server: Any, started: float) -> None:
    while not getattr(server, "started", False):
        time.sleep(0.05)
    ready = time.monotonic()
    _progress(f"API ready in {ready - started:.1f}s; posting sample wire items and columns")
    partner = DemoPartner()
    tokens = _setup(partner.url)
    partner.secret = tokens["partner_secret"]
    more_news = _data("more_news.json")
    column = _data("column.json")
    client = httpx.Client(base_url=base, timeout=30)
    editor = {"Authorization": f"Bearer {tokens['editor']}"}
    wire = {"Authorization": f"Bearer {tokens['wire']}", "Content-Type": "application/ninjs+json"}
    columns = {
        "Authorization": f"Bearer {tokens['columns']}",
        "Content-Type": "application/vnd.newsroom.column+json",
    }

    receipts: list[tuple[int, list[dict[str, Any]]]] = []
    news = [(i, item) for i, item in enumerate(more_news) if item["label"] != "opinion"]
    answer = client.post("/v1/wire/wire", headers=wire, json=[_ninjs(item, i) for i, item in news])
    receipts.append((answer.json()["receipt"], [item for _, item in news]))
    for i, item in enumerate(more_news):
        if item["label"] == "opinion":
            answer = client.post("/v1/wire/columns", headers=columns, json=_column_for(item, i))
            receipts.append((answer.json()["receipt"], [item]))
    answer = client.post("/v1/wire/columns", headers=columns, json=column)
    receipts.append((answer.json()["receipt"], [{"time": column["written_at"], "label": None}]))

    posted = sum(len(items) for _, items in receipts)
    _progress(f"posted {posted} items in {len(receipts)} wire posts")
    statuses = [(_wait_receipt(client, receipt_id, editor), items) for receipt_id, items in receipts]
    ingested = sum(1 for status, _ in statuses for row in status["items"] if row.get("story_id"))
    _progress(f"ingested {ingested} of {posted} items into stories")
    published = []
    for status, items in statuses:
        for row, item in zip(status["items"], items, strict=False):
            labels = [item["label"]] if item["label"] in ("exclusive", "breaking") else []
            client.post(
                f"/v1/stories/{row['story_id']}/publish",
                headers=editor,
                json={"labels": labels, "at": item["time"]},
            )
            published.append((row["story_id"], item))
    _progress(f"published {len(published)} stories (backdated to their wire times)")
    for story_id, item in published:
        if item["label"] == "updated":
            story = client.get(f"/v1/stories/{story_id}", headers=editor).json()
            client.patch(
                f"/v1/stories/{story_id}",
                headers=editor,
                json={
                    "lede": "The package is approved; the details follow.",
                    "expected_version": story["version"],
                },
            )
            client.post(
                f"/v1/stories/{story_id}/publish",
                headers=editor,
                json={"note": "Adds the ambassadors' decision."},
            )

    column_story = client.get(f"/v1/stories/{published[-1][0]}", headers=editor).json()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        feed = client.get("/feeds/all.atom").text
        if column_story["headline"].split("—")[0].strip() in feed and len(partner.received) >= len(published):
            break
        time.sleep(0.1)
    _progress(
        f"the column is in /feeds/all.atom; {len(partner.received)} signed pushes verified "
        "at the demo partner"
    )
    settings = get_settings()
    print(
        f"""
Newsroom demo is running ({time.monotonic() - started:.1f}s from start, {time.monotonic() - ready:.1f}s
from ready to the column in /feeds/all.atom and {len(partner.received)} pushes at the demo partner).

  Front page     {settings.site_url}/
  A column       {settings.site_url}/stories/{column_story["slug"]}
  Feeds          {settings.site_url}/feeds/all.rss  /feeds/all.atom  /feeds/all.json
                 {settings.site_url}/feeds/section/opinion.atom  /feeds/label/exclusive.rss
  News sitemap   {settings.site_url}/sitemaps/news.xml
  Health         {settings.site_url}/readyz  /metrics
  Desk           {settings.site_url}/desk  (sign in with the editor token)

  Tokens (shown once)
    wire source "wire"      {tokens["wire"]}
    column source "columns" {tokens["columns"]}
    editor                  {tokens["editor"]}
    admin                   {tokens["admin"]}
  Partner "demo-partner" at {partner.url}, secret {tokens["partner_secret"]}

From here on, one line per event (story published, feeds rendered, delivery sent or failed).
Ctrl-C stops everything.
""",
        flush=True,
    )


def _wait_receipt(client: httpx.Client, receipt_id: int, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status: dict[str, Any] = client.get(f"/v1/receipts/{receipt_id}", headers=headers).json()
        if status["status"] != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.05)
