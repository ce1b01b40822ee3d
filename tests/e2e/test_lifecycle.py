"""Tokens, sources, partners and signing secrets with a lifecycle: expire, revoke, disable, remove, rotate."""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.cli import main
from services.syndicate import partners
from shared.config import parse_duration
from shared.db import session_scope
from shared.models import Delivery, Partner, Source, Token, utcnow
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import PartnerServer

pytestmark = pytest.mark.pipeline

NINJS = "application/ninjs+json"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_item(pipeline: Pipeline, source: str, headers: dict[str, str]) -> int:
    item = {
        "uri": f"urn:life:{secrets.token_hex(4)}",
        "headlines": [{"role": "main", "value": "Life"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Cycle.</p>"}],
    }
    answer = pipeline.client.post(
        f"/v1/wire/{source}", content=json.dumps(item), headers={**headers, "Content-Type": NINJS}
    )
    return answer.status_code


@pytest.fixture
def partner_server() -> Iterator[PartnerServer]:
    server = PartnerServer()
    yield server
    server.close()


def test_durations() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
    for bad in ("", "30", "d", "3x", "-1h", "1.5h", "1h 2"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


# --- tokens ----------------------------------------------------------------------------------


def token_row(name: str) -> Token:
    with session_scope(read_only=True) as session:
        row = session.scalars(select(Token).where(Token.name == name)).one()
        session.expunge(row)
        return row


def test_token_create_list_revoke(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("editor")
    token = cli(capsys, "token", "create", "--role", "editor", "--name", name, "--expires", "30d").split()[-1]
    row = token_row(name)
    assert row.expires_at is not None
    assert timedelta(days=30) - timedelta(minutes=1) < row.expires_at - row.created_at <= timedelta(days=30)
    assert row.last_used_at is None

    assert pipeline.client.get("/v1/stories", headers=bearer(token)).status_code == 200
    first_use = token_row(name).last_used_at
    assert first_use is not None
    # Used again within the minute: nothing is written.
    assert pipeline.client.get("/v1/stories", headers=bearer(token)).status_code == 200
    assert token_row(name).last_used_at == first_use

    listed = json.loads(cli(capsys, "token", "list", "--json"))
    [view] = [view for view in listed if view["name"] == name]
    assert (view["role"], view["state"]) == ("editor", "active")
    assert view["last_used_at"] == first_use.isoformat()
    assert view["expires_at"] == row.expires_at.isoformat()
    table = cli(capsys, "token", "list")
    assert name in table and "last used" in table
    assert token not in table and token not in json.dumps(listed)
    assert row.token_hash not in table

    assert "revoked 1 token" in cli(capsys, "token", "revoke", name)
    answer = pipeline.client.get("/v1/stories", headers=bearer(token))
    assert answer.status_code == 401
    assert name not in cli(capsys, "token", "list")
    assert "revoked" in cli(capsys, "token", "list", "--all")
    assert "no live token" in cli_error(capsys, "token", "revoke", name)


def test_an_expired_token_is_refused(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("admin")
    token = cli(capsys, "token", "create", "--role", "admin", "--name", name, "--expires", "1h").split()[-1]
    assert pipeline.client.get("/v1/deliveries", headers=bearer(token)).status_code == 200
    with session_scope() as session:
        session.scalars(select(Token).where(Token.name == name)).one().expires_at = utcnow() - timedelta(
            seconds=1
        )
    assert pipeline.client.get("/v1/deliveries", headers=bearer(token)).status_code == 401
    assert "expired" in cli(capsys, "token", "list", "--all")
    with pytest.raises(SystemExit):
        main(["token", "create", "--role", "admin", "--name", name, "--expires", "soon"])


# --- sources ---------------------------------------------------------------------------------


def test_source_disable_enable_remove(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    name, wire = pipeline.source()
    assert post_item(pipeline, name, wire) == 202
    cli(capsys, "source", "disable", name)
    assert post_item(pipeline, name, wire) == 403
    cli(capsys, "source", "enable", name)
    assert post_item(pipeline, name, wire) == 202

    cli(capsys, "source", "remove", name)
    assert post_item(pipeline, name, wire) == 401
    assert name not in cli(capsys, "source", "list")
    with session_scope(read_only=True) as session:
        source = session.scalars(select(Source).where(Source.name == name)).one()
        assert source.removed_at is not None and not source.enabled
        # Its tokens are revoked, its receipts stay.
        assert all(t.revoked_at for t in session.scalars(select(Token).where(Token.source_id == source.id)))
    assert "name stays taken" in cli_error(capsys, "source", "add", name)
    assert "not found" in cli_error(capsys, "source", "disable", name)


def test_a_disabled_polled_source_is_not_polled(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("polled")
    cli(
        capsys,
        "source",
        "add",
        name,
        "--format",
        "rss",
        "--poll",
        "http://127.0.0.1:9/feed",
        "--every",
        "3600",
    )
    cli(capsys, "source", "disable", name)
    with session_scope(read_only=True) as session:
        source = session.scalars(select(Source).where(Source.name == name)).one()
        assert source.next_poll_at is None and source.poll_url
    cli(capsys, "source", "enable", name)
    with session_scope() as session:
        source = session.scalars(select(Source).where(Source.name == name)).one()
        assert source.next_poll_at is not None
        source.enabled, source.next_poll_at = False, None  # keep the scheduler off the closed port


# --- partners --------------------------------------------------------------------------------


_revisions = itertools.count(1)


def new_delivery(partner_id: int, story_id: int) -> str:
    """A pending delivery no task was queued for; each a newer version than the last."""
    delivery_id = f"msg_{secrets.token_hex(12)}"
    with session_scope() as session:
        session.add(
            Delivery(
                id=delivery_id,
                partner_id=partner_id,
                story_id=story_id,
                story_revision=next(_revisions),
                event="story.published",
                payload='{"type": "story.published"}',
                next_attempt_at=utcnow() + timedelta(days=1),
            )
        )
    return delivery_id


def a_story(pipeline: Pipeline) -> int:
    name, wire = pipeline.source()
    item = {
        "uri": f"urn:life:{secrets.token_hex(4)}",
        "headlines": [{"role": "main", "value": "Life"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>Cycle.</p>"}],
    }
    answer = pipeline.client.post(
        f"/v1/wire/{name}", content=json.dumps(item), headers={**wire, "Content-Type": NINJS}
    )
    receipt = pipeline.wait_receipt(answer.json()["receipt"], wire)
    return int(receipt["items"][0]["story_id"])


def add_partner(capsys: pytest.CaptureFixture[str], url: str) -> tuple[str, int, str]:
    name = unique("life-partner")
    secret = cli(capsys, "partner", "add", name, "--url", url, "--tag", unique("nothing")).split()[-1]
    with session_scope(read_only=True) as session:
        partner_id = session.scalars(select(Partner.id).where(Partner.name == name)).one()
    return name, partner_id, secret


def test_rotation_signs_with_both_secrets_during_the_grace(
    pipeline: Pipeline, partner_server: PartnerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name, partner_id, old = add_partner(capsys, partner_server.url)
    story_id = a_story(pipeline)
    new = cli(capsys, "partner", "rotate-secret", name, "--grace", "1h").split()[-1]
    assert new.startswith("whsec_") and new != old

    assert partners.deliver(new_delivery(partner_id, story_id)) == "sent"
    [push] = partner_server.pushes
    assert len(push.headers["webhook-signature"].split(" ")) == 2
    # The partner verifies with whichever secret it has.
    for secret in (old, new):
        Webhook(secret).verify(push.body, push.headers)

    # Rotated again with no grace: only the newest secret signs.
    newest = cli(capsys, "partner", "rotate-secret", name).split()[-1]
    assert partners.deliver(new_delivery(partner_id, story_id)) == "sent"
    push = partner_server.pushes[-1]
    assert len(push.headers["webhook-signature"].split(" ")) == 1
    Webhook(newest).verify(push.body, push.headers)
    for stale in (old, new):
        with pytest.raises(WebhookVerificationError):
            Webhook(stale).verify(push.body, push.headers)


def test_grace_ends(
    pipeline: Pipeline, partner_server: PartnerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name, partner_id, old = add_partner(capsys, partner_server.url)
    story_id = a_story(pipeline)
    new = cli(capsys, "partner", "rotate-secret", name, "--grace", "1h").split()[-1]
    with session_scope() as session:
        session.get_one(Partner, partner_id).previous_secret_until = utcnow() - timedelta(seconds=1)
    assert partners.deliver(new_delivery(partner_id, story_id)) == "sent"
    [push] = partner_server.pushes
    Webhook(new).verify(push.body, push.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(push.body, push.headers)


def test_partner_disable_enable_remove(
    pipeline: Pipeline, partner_server: PartnerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name, partner_id, _ = add_partner(capsys, partner_server.url)
    story_id = a_story(pipeline)
    pending = new_delivery(partner_id, story_id)
    cli(capsys, "partner", "disable", name)
    with session_scope(read_only=True) as session:
        row = session.get_one(Delivery, pending)
        assert row.status == "dead" and "disabled" in (row.last_error or "")
        assert not session.get_one(Partner, partner_id).enabled
    cli(capsys, "partner", "enable", name)
    assert partners.deliver(new_delivery(partner_id, story_id)) == "sent"

    cli(capsys, "partner", "remove", name)
    with session_scope(read_only=True) as session:
        partner = session.get_one(Partner, partner_id)
        assert partner.removed_at is not None and not partner.enabled
        # Its deliveries stay, as the history of what went out.
        assert session.get(Delivery, pending) is not None
    assert "was removed" in cli_error(capsys, "deliveries", "replay", pending)
    assert "not found" in cli_error(capsys, "partner", "rotate-secret", name)
    assert "not found" in cli_error(capsys, "partner", "enable", name)
    assert "name stays taken" in cli_error(capsys, "partner", "add", name, "--url", partner_server.url)
