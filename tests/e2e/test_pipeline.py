"""The whole pipeline, end to end: a real worker and scheduler on real Redis, on each database."""

from __future__ import annotations

import json
import secrets
from typing import Any

import feedparser
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from services.syndicate.partners import add_partner
from shared.db import session_scope
from shared.models import Receipt
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import PartnerServer, ninjs_validator, wait_for

pytestmark = pytest.mark.pipeline

NINJS = "application/ninjs+json"


def ninjs_item(uri: str, headline: str, **extra: Any) -> dict[str, Any]:
    return {
        "uri": uri,
        "type": "text",
        "version": "1",
        "versioncreated": "2025-07-18T16:16:00Z",
        "language": "en",
        "headlines": [{"role": "main", "value": headline}],
        "bodies": [
            {
                "role": "main",
                "contenttype": "text/html",
                "value": "<p>Body &amp; more</p><script>alert(1)</script>",
            }
        ],
        "by": "Wire desk",
        "subjects": [{"name": "Ukraine"}],
        **extra,
    }


@pytest.fixture
def partner(pipeline: Pipeline) -> Any:
    server = PartnerServer()
    with session_scope() as session:
        row = add_partner(session, name=f"partner-{secrets.token_hex(4)}", url=server.url)
        server.secret = row.secret  # type: ignore[attr-defined]
        server.name = row.name  # type: ignore[attr-defined]
    yield server
    with session_scope() as session:
        from shared.models import Partner

        session.scalars(select(Partner).where(Partner.name == server.name)).one().enabled = False  # type: ignore[attr-defined]
    server.close()


def test_wire_item_reaches_feed_and_partner(pipeline: Pipeline, partner: Any) -> None:
    name, wire = pipeline.source()
    editor = pipeline.token("editor")
    item = ninjs_item(f"urn:test:{name}:1", "Kyiv & Lviv <update> 🎉")

    answer = pipeline.client.post(
        f"/v1/wire/{name}", content=json.dumps(item), headers={**wire, "Content-Type": NINJS}
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["items"] == 1
    assert accepted["status_url"] == f"/v1/receipts/{accepted['receipt']}"

    receipt = pipeline.wait_receipt(accepted["receipt"], wire)
    assert receipt["status"] == "done"
    [row] = receipt["items"]
    assert row["outcome"] == "created" and row["guid"] == item["uri"]
    story_id = row["story_id"]

    story = pipeline.client.get(f"/v1/stories/{story_id}", headers=editor).json()
    assert story["status"] == "ingested"
    assert "<script>" not in story["body_html"]

    answer = pipeline.client.post(
        f"/v1/stories/{story_id}/publish", headers=editor, json={"labels": ["exclusive"]}
    )
    assert answer.status_code == 202, answer.text

    def in_feed() -> Any:
        feed = feedparser.parse(pipeline.client.get("/feeds/all.atom").content)
        return [e for e in feed.entries if e.title == "Kyiv & Lviv <update> 🎉"]

    [entry] = wait_for(in_feed, what="the story in /feeds/all.atom")
    assert entry.link == f"http://newsroom.test/stories/{story['slug']}"

    push = wait_for(lambda: partner.pushes, what="a delivery at the partner")[0]
    payload = Webhook(partner.secret).verify(push.body, push.headers)
    assert payload["type"] == "story.published"
    assert push.headers["content-type"] == "application/json"
    assert push.headers["webhook-id"].startswith("msg_")
    errors = [e.message for e in ninjs_validator().iter_errors(payload["data"])]
    assert errors == []
    assert payload["data"]["headlines"][0]["value"] == "Kyiv & Lviv <update> 🎉"

    page = pipeline.client.get(f"/stories/{story['slug']}")
    assert page.status_code == 200
    assert "Exclusive" in page.text


def test_feed_etag_and_304(pipeline: Pipeline) -> None:
    first = pipeline.client.get("/feeds/all.rss")
    assert first.status_code == 200
    etag = first.headers["etag"]
    again = pipeline.client.get("/feeds/all.rss", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert first.headers["last-modified"]


def _raw_kept(receipt_id: int, body: bytes) -> None:
    with session_scope() as session:
        receipt = session.get(Receipt, receipt_id)
        assert receipt is not None
        assert receipt.status == "rejected"
        assert bytes(receipt.body) == body


def test_bad_input(pipeline: Pipeline) -> None:
    name, wire = pipeline.source()
    _, other = pipeline.source()
    body = json.dumps(ninjs_item("urn:x", "Fine")).encode()

    assert pipeline.client.post(f"/v1/wire/{name}", content=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert pipeline.client.post(f"/v1/wire/{name}", content=body, headers=wrong).status_code == 401
    assert pipeline.client.post(f"/v1/wire/{name}", content=body, headers=other).status_code == 403
    assert pipeline.client.post("/v1/wire/no-such-source", content=body, headers=wire).status_code == 403
    editor = pipeline.token("editor")
    assert pipeline.client.post(f"/v1/wire/{name}", content=body, headers=editor).status_code == 403

    malformed = b'{"uri": "urn:x", "headline": '
    answer = pipeline.client.post(
        f"/v1/wire/{name}", content=malformed, headers={**wire, "Content-Type": NINJS}
    )
    assert answer.status_code == 400
    error = answer.json()
    assert error["error"] == "malformed" and "line 1" in error["detail"]
    _raw_kept(error["receipt"], malformed)

    headless = json.dumps({"uri": "urn:y", "body_html": "<p>x</p>"}).encode()
    answer = pipeline.client.post(
        f"/v1/wire/{name}", content=headless, headers={**wire, "Content-Type": NINJS}
    )
    assert answer.status_code == 422
    assert "headline" in answer.json()["detail"]
    _raw_kept(answer.json()["receipt"], headless)

    answer = pipeline.client.post(
        f"/v1/wire/{name}", content=b"hello", headers={**wire, "Content-Type": "text/csv"}
    )
    assert answer.status_code == 415
    _raw_kept(answer.json()["receipt"], b"hello")


def test_killed_goes_only_to_partners_that_were_told(pipeline: Pipeline, partner: Any) -> None:
    name, wire = pipeline.source()
    editor = pipeline.token("editor")
    item = ninjs_item(f"urn:test:{name}:killed", "Taken down later")
    answer = pipeline.client.post(
        f"/v1/wire/{name}", content=json.dumps(item), headers={**wire, "Content-Type": NINJS}
    )
    story_id = pipeline.wait_receipt(answer.json()["receipt"], wire)["items"][0]["story_id"]
    pipeline.client.post(f"/v1/stories/{story_id}/publish", headers=editor, json={})

    def pushes_for(server: PartnerServer) -> list[str]:
        return [json.loads(p.body)["type"] for p in server.pushes if "Taken down later" in p.body]

    wait_for(lambda: pushes_for(partner), what="the publish at the first partner")
    latecomer = PartnerServer()
    with session_scope() as session:
        add_partner(session, name=f"late-{id(latecomer)}", url=latecomer.url)
    answer = pipeline.client.post(
        f"/v1/stories/{story_id}/unpublish", headers=editor, json={"reason": "legal"}
    )
    assert answer.status_code == 202
    assert wait_for(lambda: pushes_for(partner) == ["story.published", "story.killed"], what="the kill")
    story = pipeline.client.get(f"/v1/stories/{story_id}", headers=editor).json()
    ours = [d["event"] for d in story["deliveries"] if d["partner"] == partner.name]
    assert ours == ["story.published", "story.killed"]
    assert [d for d in story["deliveries"] if d["partner"] == f"late-{id(latecomer)}"] == []
    assert pushes_for(latecomer) == []
    with session_scope() as session:
        from shared.models import Partner

        session.scalars(select(Partner).where(Partner.name == f"late-{id(latecomer)}")).one().enabled = False
    latecomer.close()
