"""The editors' desk in Chromium, on the real pipeline (worker and scheduler subprocesses).

Each page visited is screenshotted under test-output/desk/<database>/ and checked with
axe-core for serious and critical violations.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import feedparser
import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from services.desk.stream import LOOK_EVERY
from services.syndicate.partners import add_partner
from shared.db import session_scope
from shared.models import Delivery, Partner
from tests.helpers.deskserver import AXE, DeskServer
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ROOT, PartnerServer, Reply, wait_for

pytestmark = pytest.mark.pipeline

NINJS = "application/ninjs+json"
TZ = ZoneInfo("Europe/Kyiv")


# --- helpers -------------------------------------------------------------------------------


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def post_item(pipeline: Pipeline, http: httpx.Client, headline: str, **extra: Any) -> int:
    """Post one ninjs item as a fresh wire source; the story id once the worker ingested it."""
    name, wire = pipeline.source()
    item = {
        "uri": f"urn:desk:{name}:{secrets.token_hex(3)}",
        "type": "text",
        "version": "1",
        "versioncreated": "2026-01-10T09:00:00Z",
        "language": "en",
        "headlines": [{"role": "main", "value": headline}],
        "bodies": [
            {
                "role": "main",
                "contenttype": "text/html",
                "value": "<p>The council met on Tuesday and voted on the budget.</p>",
            }
        ],
        "by": "Wire desk",
        **extra,
    }
    reply = http.post(f"/v1/wire/{name}", content=json.dumps(item), headers={**wire, "Content-Type": NINJS})
    assert reply.status_code == 202, reply.text
    receipt = pipeline.wait_receipt(reply.json()["receipt"], wire)
    assert receipt["status"] == "done", receipt
    story_id: int = receipt["items"][0]["story_id"]
    return story_id


def story_api(pipeline: Pipeline, story_id: int) -> dict[str, Any]:
    editor = pipeline.__dict__.setdefault("_desk_editor", pipeline.token("editor"))
    body: dict[str, Any] = pipeline.client.get(f"/v1/stories/{story_id}", headers=editor).json()
    return body


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/desk")
    assert "/desk/signin" in page.url
    page.get_by_label("Token").fill(token)
    submit(page.get_by_role("button", name="Sign in"))
    page.wait_for_url(f"{base}/desk**")
    assert "/desk/signin" not in page.url


def submit(control: Any) -> None:
    """Click a button or link and wait for the page it leads to (POST, then redirect, then GET)."""
    with control.page.expect_navigation():
        control.click()


def shoot(page: Any, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def check_axe(page: Any, name: str) -> None:
    """No serious or critical axe-core violation on the page (its context must bypass the CSP)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => await axe.run(document, {iframes: false, resultTypes: ['violations']})"
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"axe on {name}: {bad}"


def new_page(chromium: Any, *, axe: bool = True) -> Any:
    # axe is injected as a script, which the desk's CSP (script-src 'self') would block.
    context = chromium.new_context(bypass_csp=axe, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture(scope="module")
def editor_token(pipeline: Pipeline) -> str:
    return bearer(pipeline.token("editor", f"desk-editor-{secrets.token_hex(2)}"))


@pytest.fixture(scope="module")
def admin_token(pipeline: Pipeline) -> str:
    return bearer(pipeline.token("admin", f"desk-admin-{secrets.token_hex(2)}"))


def partner_row(url: str, **filters: list[str]) -> str:
    name = f"desk-partner-{secrets.token_hex(3)}"
    with session_scope() as session:
        add_partner(session, name=name, url=url, **filters)
    return name


def disable_partner(name: str) -> None:
    with session_scope() as session:
        session.scalars(select(Partner).where(Partner.name == name)).one().enabled = False


# --- tests ---------------------------------------------------------------------------------


def test_signed_out_sees_nothing_and_a_wire_token_cannot_sign_in(
    pipeline: Pipeline,
    desk_server: DeskServer,
    http: httpx.Client,
    chromium: Any,
    shots: Path,
    editor_token: str,
) -> None:
    base = desk_server.base
    headline = f"Harbour reopens {secrets.token_hex(2)}"
    story_id = post_item(pipeline, http, headline)

    page = new_page(chromium)
    page.goto(f"{base}/desk/stories/{story_id}")
    assert "/desk/signin" in page.url
    assert headline not in page.content()
    shoot(page, shots, "signin")
    check_axe(page, "sign-in")
    assert http.get("/desk").status_code == 303
    assert http.get("/desk/stream").status_code == 401
    assert http.get(f"/desk/stories/{story_id}").status_code == 303

    # A wire token is a valid token, but not for the desk.
    _, wire = pipeline.source()
    page.get_by_label("Token").fill(bearer(wire))
    submit(page.get_by_role("button", name="Sign in"))
    assert "cannot sign in" in page.get_by_role("alert").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == "newsroom_desk"]

    # By keyboard alone: the field has the focus, Tab reaches the button, and the focus shows.
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(editor_token)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/desk/stories/{story_id}")
    assert page.get_by_role("heading", level=1).inner_text() == headline
    cookie = next(c for c in page.context.cookies() if c["name"] == "newsroom_desk")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/desk"
    assert cookie["expires"] > time.time() + 3600  # a session that expires, not a forever cookie

    submit(page.get_by_role("button", name="Sign out"))
    page.wait_for_url(f"{base}/desk/signin")
    # The session is gone on the server: the old cookie no longer opens anything.
    stale = http.get(f"/desk/stories/{story_id}", headers={"Cookie": f"newsroom_desk={cookie['value']}"})
    assert stale.status_code == 303 and "/desk/signin" in stale.headers["location"]
    page.context.close()


def test_incoming_is_live_and_publish_reaches_feed_and_partner(
    pipeline: Pipeline,
    desk_server: DeskServer,
    http: httpx.Client,
    chromium: Any,
    shots: Path,
    editor_token: str,
) -> None:
    base = desk_server.base
    partner = PartnerServer()
    partner_name = partner_row(partner.url, labels=["exclusive"])
    try:
        page = new_page(chromium, axe=False)  # the real CSP: the live list's script must run under it
        sign_in(page, base, editor_token)
        # A locator, not wait_for_function: the page's CSP forbids evaluating strings.
        expect(page.locator("#live")).to_have_text("Live")
        page.evaluate("window.deskMarker = 'same page'")

        headline = f"Night train to Odesa restored {secrets.token_hex(2)}"
        story_id = post_item(pipeline, http, headline)
        ingested = time.monotonic()
        row = page.locator(f"#story-{story_id}")
        row.wait_for(state="visible", timeout=10_000)
        latency = time.monotonic() - ingested
        print(f"row shown {latency:.3f}s after the receipt was done")
        # Woken through Redis, not by the stream's own periodic look.
        assert latency < LOOK_EVERY
        assert page.evaluate("window.deskMarker") == "same page"  # no reload
        assert headline in row.inner_text() and "draft" in row.inner_text()
        shoot(page, shots, "incoming")
        page.context.close()

        page = new_page(chromium)
        sign_in(page, base, editor_token)
        check_axe(page, "incoming")
        submit(page.get_by_role("link", name=headline))
        page.wait_for_url(f"{base}/desk/stories/{story_id}")
        preview = page.frame_locator("iframe.preview")
        assert preview.locator("h1.headline").inner_text() == headline
        page.get_by_label("Exclusive").first.check()
        submit(page.get_by_role("button", name="Publish", exact=True))
        assert "Published." in page.get_by_role("status").first.inner_text()

        def in_feed() -> bool:
            feed = feedparser.parse(http.get("/feeds/all.atom").content)
            return any(e.title == headline and "exclusive" in [t.term for t in e.tags] for e in feed.entries)

        wait_for(in_feed, timeout=20, what="the story in /feeds/all.atom with the exclusive label")

        def pushed() -> list[Any]:
            return [p for p in partner.pushes if p.payload["data"]["headlines"][0]["value"] == headline]

        push = wait_for(pushed, timeout=20, what="the push to the partner")
        assert push[0].payload["type"] == "story.published"

        def shows_sent() -> bool:
            page.reload()
            cells = page.locator("table.deliveries tr").filter(has_text=partner_name)
            return cells.count() == 1 and "sent" in cells.locator(".delivery-status").inner_text()

        wait_for(shows_sent, timeout=20, interval=0.3, what="the delivery shown as sent")
        assert "published" in page.locator(".story-head .meta").inner_text()
        path = shoot(page, shots, "story")
        check_axe(page, "story")
        if os.environ.get("NEWSROOM_DESK_SCREENSHOT"):
            shutil.copy(path, ROOT / os.environ["NEWSROOM_DESK_SCREENSHOT"])
        page.context.close()
    finally:
        disable_partner(partner_name)
        partner.close()


def test_two_editors_editing_the_same_story_the_second_sees_the_conflict(
    pipeline: Pipeline,
    desk_server: DeskServer,
    http: httpx.Client,
    chromium: Any,
    shots: Path,
    editor_token: str,
) -> None:
    base = desk_server.base
    story_id = post_item(pipeline, http, f"Bridge repairs begin {secrets.token_hex(2)}")
    first, second = new_page(chromium), new_page(chromium)
    for page in (first, second):
        sign_in(page, base, editor_token)
        page.goto(f"{base}/desk/stories/{story_id}")

    first.get_by_label("Headline").fill("Bridge repairs begin on Monday")
    submit(first.get_by_role("button", name="Save"))
    assert "Saved" in first.get_by_role("status").first.inner_text()

    # The second editor's page says so as soon as it happens...
    second.wait_for_function(
        "document.getElementById('changed').textContent.includes('changed since you opened')"
    )
    # ...and one who saves anyway gets the conflict, not an overwrite.
    second.get_by_label("Headline").fill("Bridge repairs delayed")
    with second.expect_response(lambda r: r.url.endswith("/edit")) as answer:
        second.get_by_role("button", name="Save").click()
    assert answer.value.status == 409
    conflict = second.locator("section.conflict")
    assert "Conflict" in conflict.inner_text()
    assert "edited by editor:" in conflict.inner_text()
    assert "Monday" in " ".join(conflict.locator("ins").all_inner_texts())  # the other change, as a diff
    # The second editor's text is kept for them, and nothing was overwritten.
    assert second.get_by_label("Headline").input_value() == "Bridge repairs delayed"
    assert story_api(pipeline, story_id)["headline"] == "Bridge repairs begin on Monday"
    shoot(second, shots, "conflict")
    check_axe(second, "conflict")
    for page in (first, second):
        page.context.close()


def next_spring_forward(now: datetime) -> datetime:
    """The local midnight of the next day on which Europe/Kyiv's clocks go forward."""
    day = datetime(now.year, now.month, now.day, tzinfo=TZ)
    for _ in range(400):
        day += timedelta(days=1)
        if (day + timedelta(hours=12)).utcoffset() > day.utcoffset():  # type: ignore[operator]
            return day
    raise AssertionError("no DST change within a year")


def test_schedule_across_the_dst_change_then_unpublish(
    pipeline: Pipeline,
    desk_server: DeskServer,
    http: httpx.Client,
    chromium: Any,
    shots: Path,
    editor_token: str,
) -> None:
    base = desk_server.base
    headline = f"Clocks go forward {secrets.token_hex(2)}"
    story_id = post_item(pipeline, http, headline)
    page = new_page(chromium)
    sign_in(page, base, editor_token)
    page.goto(f"{base}/desk/stories/{story_id}")

    change = next_spring_forward(datetime.now(UTC))
    moments = {}
    for label, wall in (("before", change - timedelta(hours=12)), ("after", change + timedelta(hours=12))):
        page.get_by_label("Publish at").fill(wall.strftime("%Y-%m-%dT%H:%M"))
        submit(page.get_by_role("button", name="Schedule"))
        assert "Scheduled for" in page.get_by_role("status").first.inner_text()
        story = story_api(pipeline, story_id)
        assert story["status"] == "scheduled"
        moments[label] = datetime.fromisoformat(story["publish_at"].replace("Z", "+00:00"))
        assert moments[label] == wall.astimezone(UTC)
        assert wall.strftime("%H:%M") in page.locator("#scheduled-for").inner_text()
    # Noon the day before to noon on the day the clocks go forward: 23 hours, not 24.
    assert moments["after"] - moments["before"] == timedelta(hours=23)
    assert "EEST" in page.locator("#scheduled-for").inner_text()
    shoot(page, shots, "scheduled")

    # The hour the clocks skip does not exist: refused with the reason, nothing scheduled.
    walls = [change + timedelta(hours=hour, minutes=30) for hour in range(24)]
    gap = next(wall for wall in walls if wall.astimezone(UTC).astimezone(TZ).hour != wall.hour)
    page.get_by_label("Publish at").fill(gap.strftime("%Y-%m-%dT%H:%M"))
    submit(page.get_by_role("button", name="Schedule"))
    assert "does not exist" in page.get_by_role("alert").inner_text()
    assert story_api(pipeline, story_id)["publish_at"] == moments["after"].isoformat().replace("+00:00", "Z")

    page.get_by_label("Reason").fill("Holding it for the morning")
    submit(page.get_by_role("button", name="Unpublish"))
    assert "Schedule cancelled" in page.get_by_role("status").first.inner_text()
    assert story_api(pipeline, story_id)["status"] == "ingested"

    submit(page.get_by_role("button", name="Publish", exact=True))
    wait_for(lambda: headline in http.get("/feeds/all.atom").text, timeout=20, what="published in the feed")
    page.get_by_label("Reason").fill("Legal asked us to take it down")
    submit(page.get_by_role("button", name="Unpublish"))
    assert "Unpublished" in page.get_by_role("status").first.inner_text()
    assert "killed" in page.locator(".story-head .meta").inner_text()
    wait_for(lambda: headline not in http.get("/feeds/all.atom").text, timeout=20, what="gone from the feed")
    page.context.close()


def test_admin_replays_a_dead_delivery(
    pipeline: Pipeline,
    desk_server: DeskServer,
    http: httpx.Client,
    chromium: Any,
    shots: Path,
    admin_token: str,
) -> None:
    base = desk_server.base
    section = f"desk-dead-{secrets.token_hex(2)}"
    partner = PartnerServer(default=Reply(status=400))  # a 4xx is dead at once
    partner_name = partner_row(partner.url, sections=[section])
    try:
        story_id = post_item(pipeline, http, f"Ferry timetable changes {secrets.token_hex(2)}")
        page = new_page(chromium)
        sign_in(page, base, admin_token)
        page.goto(f"{base}/desk/stories/{story_id}")
        page.get_by_label("Section").fill(section)
        submit(page.get_by_role("button", name="Save"))
        submit(page.get_by_role("button", name="Publish", exact=True))

        def dead() -> str | None:
            with session_scope(read_only=True) as session:
                query = select(Delivery.id).join(Partner, Partner.id == Delivery.partner_id)
                return session.scalar(query.where(Partner.name == partner_name, Delivery.status == "dead"))

        delivery_id = wait_for(dead, timeout=20, what="a dead delivery")
        page.goto(f"{base}/desk/admin")
        row = page.locator(f"#delivery-{delivery_id}")
        assert partner_name in row.inner_text()
        shoot(page, shots, "admin")
        check_axe(page, "admin")

        partner.default = Reply(status=204)
        submit(row.get_by_role("button", name="Replay"))
        assert "sent again" in page.get_by_role("status").first.inner_text()
        wait_for(lambda: len(partner.pushes) >= 2, timeout=20, what="the replayed push")
        assert (
            partner.pushes[0].headers["webhook-id"] == partner.pushes[1].headers["webhook-id"] == delivery_id
        )

        def shows_sent() -> bool:
            page.goto(f"{base}/desk/stories/{story_id}")
            return "sent" in page.locator(f"#delivery-{delivery_id} .delivery-status").inner_text()

        wait_for(shows_sent, timeout=20, interval=0.3, what="the replayed delivery shown as sent")
        page.context.close()
    finally:
        disable_partner(partner_name)
        partner.close()


class ForgingSite:
    """A page on another loopback port whose form posts to the desk as soon as it loads."""

    def __init__(self, action: str, fields: dict[str, str]) -> None:
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        form = f'<form id="f" method="post" action="{action}">{inputs}</form>'
        script = "<script>document.getElementById('f').submit()</script>"
        page = f"<!doctype html><title>Win a prize</title>{form}{script}".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_no_forged_cross_site_post_succeeds(
    pipeline: Pipeline, desk_server: DeskServer, http: httpx.Client, chromium: Any, editor_token: str
) -> None:
    base = desk_server.base
    story_id = post_item(pipeline, http, f"Budget vote postponed {secrets.token_hex(2)}")
    page = new_page(chromium)
    sign_in(page, base, editor_token)
    page.goto(f"{base}/desk/stories/{story_id}")
    csrf = page.locator("input[name=csrf]").first.input_value()
    version = str(story_api(pipeline, story_id)["version"])
    publish = f"{base}/desk/stories/{story_id}/publish"

    # Another port of the same host is the same *site*: the Strict cookie goes along, and even
    # a leaked CSRF token does not help, because the Origin is not the desk's.
    forger = ForgingSite(publish, {"csrf": csrf, "expected_version": version, "exclusive": "on"})
    try:
        with page.expect_response(publish) as answer:
            page.goto(forger.url)
        assert answer.value.status == 403
    finally:
        forger.close()

    request = page.context.request
    refused = [
        request.post(publish, form={"expected_version": version}, headers={"Origin": base}),
        request.post(
            publish, form={"csrf": "guessed", "expected_version": version}, headers={"Origin": base}
        ),
        request.post(publish, form={"csrf": csrf}, headers={"Origin": "http://127.0.0.1:9"}),
        request.post(f"{base}/desk/signout", form={"csrf": "guessed"}, headers={"Origin": base}),
    ]
    assert [r.status for r in refused] == [403, 403, 403, 403]
    assert story_api(pipeline, story_id)["status"] == "ingested"
    # The same request from the desk itself, with the session's token, is let through.
    allowed = request.post(
        publish, form={"csrf": csrf, "expected_version": version}, headers={"Origin": base}, max_redirects=0
    )
    assert allowed.status == 303
    assert story_api(pipeline, story_id)["status"] == "published"
    page.context.close()
