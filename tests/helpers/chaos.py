"""Helpers of the fault tests: posts, a newsroom to post to, and the invariants after any fault."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Delivery, Partner, Receipt, Revision, Story
from tests.helpers.support import PartnerServer


def ninjs(guid: str, version: int = 1, headline: str | None = None) -> dict[str, Any]:
    return {
        "uri": guid,
        "version": str(version),
        "versioncreated": f"2025-07-18T10:{version // 60 % 60:02d}:{version % 60:02d}Z",
        "headlines": [{"role": "main", "value": headline or f"Story {guid} v{version}"}],
        "bodies": [
            {"role": "main", "contenttype": "text/html", "value": f"<p>Body of {guid} v{version}</p>"}
        ],
        "language": "en",
    }


def setup_newsroom(*, auto_publish: bool = True) -> tuple[str, str, PartnerServer, str]:
    """An auto-publishing source and a partner on loopback."""
    from services.ingest.service import add_source
    from services.syndicate.partners import add_partner

    name = f"wire-{secrets.token_hex(3)}"
    server = PartnerServer()
    with session_scope() as session:
        _, token = add_source(session, name=name, auto_publish=auto_publish)
        partner = add_partner(session, name=f"partner-{secrets.token_hex(3)}", url=server.url)
        secret = partner.secret
    return name, token, server, secret


def invariants(receipts: list[int], expected_guids: set[str], partner: PartnerServer) -> dict[str, Any]:
    """What must hold after any fault; returns the facts for messages (empty 'problems' = all good)."""
    problems: list[str] = []
    with session_scope(read_only=True) as session:
        statuses = dict(
            session.execute(
                select(Receipt.status, func.count()).where(Receipt.id.in_(receipts)).group_by(Receipt.status)
            ).all()
        )
        if statuses.get("done", 0) != len(set(receipts)):
            problems.append(f"receipts not all done: {statuses}")
        stories = session.execute(select(Story.guid, Story.status, Story.id)).all()
        guids = [row.guid for row in stories if row.guid in expected_guids]
        if sorted(guids) != sorted(expected_guids):
            problems.append(f"stories: {len(guids)} of {len(expected_guids)} guids")
        unpublished = [
            row.guid for row in stories if row.guid in expected_guids and row.status != "published"
        ]
        if unpublished:
            problems.append(f"{len(unpublished)} stories not published, e.g. {unpublished[:3]}")
        twice = session.execute(
            select(Revision.story_id, func.count())
            .where(Revision.action == "published")
            .group_by(Revision.story_id)
            .having(func.count() > 1)
        ).all()
        if twice:
            problems.append(f"{len(twice)} stories published more than once")
        deliveries = session.execute(
            select(
                Delivery.id, Delivery.story_id, Delivery.story_revision, Delivery.event, Delivery.status
            ).join(Partner, Partner.id == Delivery.partner_id)
        ).all()
    pending = [d.id for d in deliveries if d.status != "sent"]
    if pending:
        problems.append(f"{len(pending)} deliveries not sent")
    received: dict[str, set[str]] = {}
    for push in list(partner.pushes):
        body = json.loads(push.body)
        key = f"{body['data']['uri']}|{body['data']['version']}|{body['type']}"
        received.setdefault(key, set()).add(push.headers["webhook-id"])
    ids_received = {webhook_id for ids in received.values() for webhook_id in ids}
    missing = {d.id for d in deliveries} - ids_received
    if missing:
        problems.append(f"{len(missing)} deliveries never reached the partner")
    doubled = {key: ids for key, ids in received.items() if len(ids) > 1}
    if doubled:
        problems.append(f"{len(doubled)} (story, version, event) received under different webhook-ids")
    return {"problems": problems, "pushes": len(partner.pushes), "deliveries": len(deliveries)}


def settle(
    receipts: list[int], guids: set[str], partner: PartnerServer, timeout: float = 120
) -> dict[str, Any]:
    """Wait until the invariants hold; fail with what still does not."""
    last: dict[str, Any] = {}

    def ok() -> bool:
        last.update(invariants(receipts, guids, partner))
        return not last["problems"]

    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout}s: {last['problems']}")
        time.sleep(0.5)
    return last
