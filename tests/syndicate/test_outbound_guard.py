"""Outbound requests go only where they may: checked when added, when connecting, on every redirect.

127.0.0.2 is loopback too, so a server can listen there while NEWSROOM_OUTBOUND_ALLOW lets
only 127.0.0.1 through: a refused request is then told apart from a failed one by the
server that never heard from us.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta

import pytest

from services.cli import main
from services.ingest.service import PollRequest, add_source, fetch_poll
from services.syndicate import partners
from shared import egress
from shared.config import reset_settings
from shared.db import session_scope
from shared.errors import Unprocessable
from shared.models import Delivery, Partner, utcnow
from tests.helpers.newsdesk import (
    delivery,
    insert_story,
    new_delivery,
    new_partner,
    new_source,
    publish,
    unique,
)
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import PartnerServer, Reply, wait_for

pytestmark = pytest.mark.pipeline

T0 = (utcnow() + timedelta(days=30)).replace(microsecond=0)
LATER = T0 + timedelta(days=1)
OTHER_LOOPBACK = "127.0.0.2"
RSS = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>http://x.test/</link>'
    b"<description>d</description></channel></rss>"
)


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set NEWSROOM_OUTBOUND_ALLOW for this process during one test: ``allow.setenv(...)``."""
    yield monkeypatch
    monkeypatch.undo()
    reset_settings()


def allowing(env: pytest.MonkeyPatch, cidrs: str) -> None:
    env.setenv("NEWSROOM_OUTBOUND_ALLOW", cidrs)
    reset_settings()


@pytest.fixture
def elsewhere() -> Iterator[PartnerServer]:
    """A server on loopback's other address, which only a wider allow list reaches."""
    server = PartnerServer(
        Reply(status=200, body=RSS, headers={"Content-Type": "application/rss+xml"}), host=OTHER_LOOPBACK
    )
    yield server
    server.close()


# --- which addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104  # an address checked, not bound
        ("::", "unspecified"),
        ("100.64.0.1", "not a public"),
        ("2002:7f00:1::1", "embeds a loopback"),
        ("240.0.0.1", "address"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = egress.refusal(ipaddress.ip_address(address), [])
    assert reason is not None and kind in reason, reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert egress.refusal(ipaddress.ip_address(address), []) is None


def test_the_allow_list_lets_exactly_its_cidrs_through() -> None:
    allow = egress.parse_allow("127.0.0.1/32, 10.0.0.0/8")
    assert egress.refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert egress.refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow) is None
    assert egress.refusal(ipaddress.ip_address("10.200.0.1"), allow) is None
    assert egress.refusal(ipaddress.ip_address("127.0.0.2"), allow) is not None
    assert egress.refusal(ipaddress.ip_address("::1"), allow) is not None
    assert egress.refusal(ipaddress.ip_address("169.254.169.254"), allow) is not None
    with pytest.raises(ValueError, match="nonsense"):
        egress.parse_allow("127.0.0.1/32,nonsense")


def test_log_lines_show_no_password_and_no_query() -> None:
    assert (
        egress.redact_url("redis://:hunter2secret@redis.internal:6379/0")
        == "redis://:***@redis.internal:6379/0"
    )
    assert "hunter2" not in egress.redact_url("redis://user:hunter2@redis.internal:6379/0")
    shown = egress.redact_url("https://partner.example/hook?token=abc123&x=1")
    assert "abc123" not in shown and shown.startswith("https://partner.example/hook")


# --- when added ----------------------------------------------------------------------------------


def test_urls_that_resolve_to_non_public_addresses_are_refused_when_added(
    newsroom: dict[str, str], allow: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    allowing(allow, "")
    with session_scope() as session, pytest.raises(Unprocessable, match="loopback"):
        partners.add_partner(session, name=unique("guard"), url="http://127.0.0.1:9/hook")
    refused = (
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://10.0.0.7/hook", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
    )
    for url, kind in refused:
        with pytest.raises(SystemExit) as exit_info:
            main(["partner", "add", unique("guard"), "--url", url])
        assert exit_info.value.code == 2
        assert kind in capsys.readouterr().err, url
        with pytest.raises(SystemExit) as exit_info:
            main(["source", "add", unique("guard"), "--format", "rss", "--poll", url, "--every", "60"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "poll URL" in err and kind in err, url
    with session_scope() as session, pytest.raises(Unprocessable, match="does not resolve"):
        add_source(session, name=unique("guard"), poll_url="http://no-such-host.invalid/feed", poll_every=60)
    # The allow list lets its CIDRs through, and nothing else.
    allowing(allow, "127.0.0.1/32")
    with session_scope() as session:
        partners.add_partner(session, name=unique("guard"), url="http://127.0.0.1:9/hook")
        with pytest.raises(Unprocessable, match="loopback"):
            partners.add_partner(session, name=unique("guard"), url=f"http://{OTHER_LOOPBACK}:9/hook")


# --- when connecting -----------------------------------------------------------------------------


def test_a_push_goes_to_the_checked_address_and_is_refused_when_dns_changes(
    newsroom: dict[str, str], allow: pytest.MonkeyPatch, elsewhere: PartnerServer
) -> None:
    port = elsewhere.server.server_address[1]
    host = "partner.newsroom.test"
    answers = {host: "127.0.0.1"}
    allow.setattr(egress, "resolve", lambda name, _port: [ipaddress.ip_address(answers[name])])
    partner = new_partner(f"http://{host}:{port}/hook")  # resolves to 127.0.0.1 when added: allowed
    story = insert_story(new_source())
    delivery_id = new_delivery(partner, story.id, next_attempt_at=LATER)

    answers[host] = OTHER_LOOPBACK  # the name now points somewhere the allow list does not cover
    assert partners.deliver(delivery_id, now=T0) == "pending"
    row = delivery(delivery_id)
    assert row.last_error is not None and "refused" in row.last_error and OTHER_LOOPBACK in row.last_error
    assert elsewhere.pushes == []

    allowing(allow, f"127.0.0.1/32,{OTHER_LOOPBACK}/32")
    assert partners.deliver(delivery_id, now=T0 + timedelta(minutes=1)) == "sent"
    [push] = elsewhere.pushes
    # Connected to the address it checked, and still spoke to the host by its name.
    assert push.headers["host"] == f"{host}:{port}"


def test_the_worker_refuses_a_partner_whose_address_is_not_allowed(
    pipeline: Pipeline, elsewhere: PartnerServer
) -> None:
    # A row that bypassed the check when added (as rows stored before it did): the worker's
    # own connection is refused all the same.
    partner = new_partner("http://127.0.0.1:9/hook")
    with session_scope() as session:
        session.get_one(
            Partner, partner.id
        ).url = f"http://{OTHER_LOOPBACK}:{elsewhere.server.server_address[1]}/"
    story = insert_story(new_source(), tags=[partner.tag])
    publish(story.id)

    def refused() -> Delivery | None:
        with session_scope(read_only=True) as session:
            row = session.query(Delivery).filter_by(partner_id=partner.id).one_or_none()
            return row if row is not None and row.last_error else None

    row = wait_for(refused, what="the refused attempt")
    assert "refused" in (row.last_error or "") and "loopback" in (row.last_error or "")
    assert elsewhere.pushes == []
    with session_scope() as session:
        session.get_one(Partner, partner.id).enabled = False


def test_a_poll_redirect_to_a_forbidden_address_is_refused(
    newsroom: dict[str, str], allow: pytest.MonkeyPatch, elsewhere: PartnerServer
) -> None:
    target = f"http://{OTHER_LOOPBACK}:{elsewhere.server.server_address[1]}/feed.xml"
    for location, kind in ((target, "loopback"), ("http://169.254.169.254/latest/meta-data/", "link-local")):
        redirector = PartnerServer(Reply(status=302, headers={"Location": location}))
        try:
            request = PollRequest(
                source_id=0, name="guarded", url=redirector.url, every=60, etag=None, last_modified=None
            )
            response = fetch_poll(request)
        finally:
            redirector.close()
        assert response.error is not None and "refused" in response.error and kind in response.error
        assert len(redirector.pushes) == 1
    assert elsewhere.pushes == []

    # Once the allow list covers the target, the same redirect is followed.
    allowing(allow, f"127.0.0.1/32,{OTHER_LOOPBACK}/32")
    redirector = PartnerServer(Reply(status=302, headers={"Location": target}))
    try:
        response = fetch_poll(
            PollRequest(
                source_id=0, name="guarded", url=redirector.url, every=60, etag=None, last_modified=None
            )
        )
    finally:
        redirector.close()
    assert (response.error, response.status, response.body) == (None, 200, RSS)
    assert len(elsewhere.pushes) == 1
