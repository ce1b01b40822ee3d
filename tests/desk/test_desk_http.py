"""The desk over plain HTTP on the real server: the live stream's catch-up, filters, headers, tokens."""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.desk.sessions import SESSION_TTL, _key
from shared.db import session_scope
from shared.models import Revision
from shared.redis import get_redis
from tests.helpers.deskserver import DeskServer
from tests.helpers.pipeline import Pipeline

pytestmark = pytest.mark.pipeline

NINJS = "application/ninjs+json"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def signed_in(desk_server: DeskServer, token: str) -> httpx.Client:
    """A client holding a desk session, signed in through the form as a browser would."""
    client = httpx.Client(base_url=desk_server.base, timeout=10, headers={"Origin": desk_server.base})
    form = client.get("/desk/signin")
    reply = client.post("/desk/signin", data={"token": token, "csrf": csrf_of(form.text), "next": "/desk"})
    assert reply.status_code == 303, reply.text
    return client


def post_item(
    pipeline: Pipeline,
    http: httpx.Client,
    headline: str,
    source: tuple[str, dict[str, str]] | None = None,
    **extra: Any,
) -> int:
    name, wire = source or pipeline.source()
    item = {
        "uri": f"urn:desk:{secrets.token_hex(4)}",
        "type": "text",
        "version": "1",
        "language": "en",
        "headlines": [{"role": "main", "value": headline}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Text.</p>"}],
        **extra,
    }
    reply = http.post(f"/v1/wire/{name}", content=json.dumps(item), headers={**wire, "Content-Type": NINJS})
    receipt = pipeline.wait_receipt(reply.json()["receipt"], wire)
    assert receipt["status"] == "done", receipt
    story_id: int = receipt["items"][0]["story_id"]
    return story_id


@pytest.fixture(scope="module")
def editor(pipeline: Pipeline, desk_server: DeskServer) -> Any:
    token = pipeline.token("editor")["Authorization"].removeprefix("Bearer ")
    client = signed_in(desk_server, token)
    yield client
    client.close()


def test_a_dropped_stream_catches_up_from_last_event_id(
    pipeline: Pipeline, http: httpx.Client, editor: httpx.Client
) -> None:
    with session_scope(read_only=True) as session:
        seen = session.scalar(select(func.max(Revision.id))) or 0
    # Two stories arrive while the browser is disconnected.
    missed = {post_item(pipeline, http, f"Missed story {n}") for n in range(2)}
    events: list[dict[str, Any]] = []
    ids: list[int] = []
    deadline = time.monotonic() + 15
    with editor.stream("GET", "/desk/stream", headers={"Last-Event-ID": str(seen)}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if missed <= {event["id"] for event in events} or time.monotonic() > deadline:
                break
    assert missed <= {event["id"] for event in events}
    assert ids == sorted(ids) and ids[0] > seen
    assert all(f'id="story-{event["id"]}"' in event["html"] for event in events if event["id"] in missed)


def test_incoming_filters_by_source_section_status_and_headline(
    pipeline: Pipeline, http: httpx.Client, editor: httpx.Client
) -> None:
    tag = secrets.token_hex(3)
    first, second = pipeline.source(), pipeline.source()
    plain = post_item(pipeline, http, f"Grain exports rise {tag}", first)
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    held = post_item(pipeline, http, f"Embargoed report {tag}", second, embargoed=later)

    def listed(**query: str) -> set[int]:
        page = editor.get("/desk", params=query)
        assert page.status_code == 200
        return {int(found) for found in re.findall(r'id="story-(\d+)"', page.text)}

    assert {plain, held} <= listed()
    assert listed(source=first[0]) == {plain}
    assert listed(q=f"embargoed report {tag}") == {held}
    assert held in listed(status="embargoed") and plain not in listed(status="embargoed")
    assert plain in listed(status="draft") and held not in listed(status="draft")
    assert not {plain, held} & listed(status="published")
    editor.post(
        f"/desk/stories/{plain}/edit",
        data={
            "csrf": csrf_of(editor.get(f"/desk/stories/{plain}").text),
            "headline": f"Grain exports rise {tag}",
            "section": "Economy",
        },
    )
    assert listed(section="economy", q=tag) == {plain}
    story = editor.get(f"/desk/stories/{held}").text
    assert "Embargoed until" in story and "embargoed" in story


def test_desk_pages_are_private_and_script_only_from_the_site(
    desk_server: DeskServer, editor: httpx.Client
) -> None:
    page = editor.get("/desk")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # no inline script: the only one is /desk/static/desk.js
    signin = httpx.get(f"{desk_server.base}/desk/signin")
    cookie = signin.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/desk" in cookie
    # The session itself lives in Redis and expires there.
    cookie = editor.cookies.get("newsroom_desk")
    assert cookie
    session_id, _, signature = cookie.rpartition(".")
    assert session_id and signature
    ttl = get_redis().ttl(_key(session_id))
    assert 0 < ttl <= SESSION_TTL


def test_a_forged_cookie_or_a_revoked_token_ends_the_session(
    pipeline: Pipeline, desk_server: DeskServer
) -> None:
    from shared.auth import revoke_tokens

    name = f"editor-{secrets.token_hex(3)}"
    editor = signed_in(desk_server, pipeline.token("editor", name)["Authorization"].removeprefix("Bearer "))
    assert editor.get("/desk").status_code == 200
    cookie = editor.cookies["newsroom_desk"]
    session_id = cookie.rpartition(".")[0]
    for value in (f"{session_id}.{'0' * 32}", session_id):  # a forged signature, and none
        with httpx.Client(base_url=desk_server.base, cookies={"newsroom_desk": value}) as forged:
            assert forged.get("/desk", follow_redirects=False).status_code in (302, 303, 307)
    with session_scope() as session:
        assert revoke_tokens(session, name=name) == 1
    assert editor.get("/desk", follow_redirects=False).status_code in (302, 303, 307)
    editor.close()
    assert not get_redis().exists(_key(session_id))


def test_an_admin_creates_a_token_shown_once_that_signs_in(
    pipeline: Pipeline, desk_server: DeskServer, editor: httpx.Client
) -> None:
    assert editor.get("/desk/admin").status_code == 403  # editors do not manage tokens
    admin = signed_in(desk_server, pipeline.token("admin")["Authorization"].removeprefix("Bearer "))
    name = f"night-editor-{secrets.token_hex(2)}"
    reply = admin.post(
        "/desk/admin/tokens",
        data={"csrf": csrf_of(admin.get("/desk/admin").text), "name": name, "role": "editor"},
    )
    assert reply.status_code == 303
    shown = admin.get("/desk/admin").text
    token = re.search(r"\(shown once\): (nr_editor_\S+?)</p>", shown)
    assert token and name in shown
    assert token.group(1) not in admin.get("/desk/admin").text  # once
    signed_in(desk_server, token.group(1)).close()
    admin.close()


def test_a_new_wire_version_of_a_published_story_is_flagged_until_published(
    pipeline: Pipeline, http: httpx.Client, editor: httpx.Client
) -> None:
    source = pipeline.source()
    uri = f"urn:desk:{secrets.token_hex(4)}"
    story_id = post_item(pipeline, http, "Port strike ends", source, uri=uri)
    page = editor.get(f"/desk/stories/{story_id}").text
    published = editor.post(
        f"/desk/stories/{story_id}/publish", data={"csrf": csrf_of(page), "breaking": "on"}
    )
    assert published.status_code == 303

    def row() -> str:
        found = re.search(rf'<tr id="story-{story_id}".*?</tr>', editor.get("/desk").text, re.DOTALL)
        assert found
        return found.group(0)

    assert "published" in row() and "Breaking" in row() and "new version" not in row()
    post_item(pipeline, http, "Port strike ends after talks", source, uri=uri, version="2")
    assert "new version since last publish" in row()
    story = editor.get(f"/desk/stories/{story_id}").text
    # The versions compare word by word, and the preview already shows the new text.
    assert "after talks</ins>" in story
    assert "Port strike ends after talks" in story
    editor.post(f"/desk/stories/{story_id}/publish", data={"csrf": csrf_of(story), "breaking": "on"})
    assert "new version" not in row() and "Updated" in row()


def test_a_story_without_a_headline_is_listed_with_link_text(
    pipeline: Pipeline, editor: httpx.Client
) -> None:
    from sqlalchemy import update

    from shared.models import Story
    from tests.helpers.newsdesk import insert_story, new_source

    story = insert_story(new_source())
    with session_scope() as session:  # as a wire item that lost its headline in an update
        session.execute(update(Story).where(Story.id == story.id).values(headline=" "))
    page = editor.get("/desk")
    row = re.search(rf'id="story-{story.id}".*?</tr>', page.text, re.S)
    assert row is not None
    assert f'<a href="/desk/stories/{story.id}">(no headline)</a>' in row.group(0)
