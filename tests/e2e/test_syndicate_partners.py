"""Partners end to end: real publishes, the real worker, real loopback partners, on each database."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from shared.text import slugify
from tests.helpers.newsdesk import (
    Answer,
    Hook,
    PartnerRef,
    deliveries_of,
    disable_partner,
    edit_and_republish,
    insert_story,
    new_partner,
    new_source,
    publish,
    unique,
    unpublish,
)
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ninjs_validator, wait_for

pytestmark = pytest.mark.pipeline

SITE = "http://newsroom.test"


def received(hook: Hook, partner: PartnerRef, slug: str) -> list[dict[str, Any]]:
    """The verified payloads a partner received for one story, in the order they arrived."""
    found = []
    for push in list(hook.pushes):
        payload: dict[str, Any] = Webhook(partner.secret).verify(push.body, push.headers)
        assert push.headers["webhook-id"].startswith("msg_")
        if payload["data"]["uri"] == f"{SITE}/stories/{slug}":
            found.append(payload)
    return found


def test_partners_get_what_matches_their_filters_signed_and_in_order(pipeline: Pipeline) -> None:
    hooks = {"section": Hook(), "tag": Hook(), "label": Hook()}
    token = unique("filters")
    section, tag = f"Економіка {token}", f"Київ {token}"
    by_section = new_partner(hooks["section"].url, sections=[section])
    by_tag = new_partner(hooks["tag"].url, tags=[tag.upper()])
    by_label = new_partner(hooks["label"].url, labels=["Opinion"])
    mine = [by_section, by_tag, by_label]
    hook_of = {by_section.id: hooks["section"], by_tag.id: hooks["tag"], by_label.id: hooks["label"]}
    source = new_source()
    in_section = insert_story(source, section=section)
    tagged = insert_story(source, tags=[tag, "Other"])
    column = insert_story(source, labels=["opinion"], tags=[unique("column")])
    neither = insert_story(source, section=unique("Sport"), tags=[unique("x")])
    try:
        for story in (in_section, tagged, column, neither):
            assert publish(story.id) == "story.published"
            # The delivery rows were written with the publish, in its transaction.
            wanted = {in_section.id: by_section, tagged.id: by_tag, column.id: by_label}.get(story.id)
            for partner in mine:
                rows = deliveries_of(partner.id, story.id)
                assert len(rows) == (1 if partner is wanted else 0), (partner.name, story.headline)

        for partner, story in ((by_section, in_section), (by_tag, tagged), (by_label, column)):
            [payload] = wait_for(
                lambda p=partner, s=story: received(hook_of[p.id], p, s.slug),
                what=f"{story.slug} at its partner",
            )
            assert payload["type"] == "story.published"
            assert payload["data"]["headlines"][0]["value"] == story.headline
            assert [e.message for e in ninjs_validator().iter_errors(payload["data"])] == []
            assert payload["timestamp"].endswith("Z")
        for partner in mine:
            assert received(hook_of[partner.id], partner, neither.slug) == []

        # Update and kill in quick succession: every version arrives, and in order.
        assert edit_and_republish(tagged.id, headline=f"{tagged.headline} (updated)") == "story.updated"
        assert unpublish(tagged.id) == "story.killed"

        def killed() -> bool:
            payloads = received(hooks["tag"], by_tag, tagged.slug)
            return bool(payloads) and payloads[-1]["type"] == "story.killed"

        wait_for(killed, what="the kill at the tag partner")
        payloads = received(hooks["tag"], by_tag, tagged.slug)
        assert [payload["type"] for payload in payloads] == [
            "story.published",
            "story.updated",
            "story.killed",
        ]
        versions = [int(payload["data"]["version"]) for payload in payloads]
        assert versions == sorted(set(versions)), versions
        wait_for(lambda: deliveries_of(by_tag.id, tagged.id)[-1].status == "sent", what="the kill recorded")
        rows = deliveries_of(by_tag.id, tagged.id)
        assert [(row.event, row.status) for row in rows] == [
            ("story.published", "sent"),
            ("story.updated", "sent"),
            ("story.killed", "sent"),
        ]

        # A story that leaves a partner's filters: the partner that had it hears of the change.
        retagged = insert_story(source, tags=[tag])
        publish(retagged.id)
        wait_for(
            lambda: received(hooks["tag"], by_tag, retagged.slug), what="the retagged story, first version"
        )
        assert edit_and_republish(retagged.id, tags=["Elsewhere"]) == "story.updated"
        wait_for(
            lambda: len(received(hooks["tag"], by_tag, retagged.slug)) == 2,
            what="the retag at the tag partner",
        )
        assert received(hooks["tag"], by_tag, retagged.slug)[-1]["type"] == "story.updated"
    finally:
        for partner in mine:
            disable_partner(partner.id)
        for hook in hooks.values():
            hook.close()


def test_a_hanging_partner_delays_neither_another_partner_nor_the_feeds(pipeline: Pipeline) -> None:
    gate = threading.Event()
    hanging = Hook(Answer(204, gate=gate))
    healthy = Hook()
    tag = unique("isolation")
    slow = new_partner(hanging.url, tag=tag)
    fast = new_partner(healthy.url, tag=tag)
    source = new_source()
    stories = [insert_story(source, tags=[tag]) for _ in range(6)]
    feed = f"/feeds/tag/{slugify(tag)}.json"
    try:
        for story in stories:
            publish(story.id)

        def all_at_healthy() -> bool:
            return all(received(healthy, fast, story.slug) for story in stories)

        def all_in_feed() -> bool:
            answer = pipeline.client.get(feed)
            return answer.status_code == 200 and len(answer.json()["items"]) == 6

        wait_for(all_at_healthy, what="every story at the healthy partner")
        wait_for(
            lambda: {row.status for row in deliveries_of(fast.id)} == {"sent"},
            what="the healthy partner's deliveries recorded as sent",
        )
        wait_for(all_in_feed, what="every story in the feed")
        # Meanwhile the hanging partner holds its requests, and no more than its bound of them.
        wait_for(lambda: len(hanging.pushes) >= 4, what="the hanging partner's first four requests")
        slow_rows = deliveries_of(slow.id)
        in_flight = [row for row in slow_rows if row.attempts == 1 and row.last_error is None]
        assert len(in_flight) == 4, [(row.attempts, row.last_error) for row in slow_rows]
        assert len(hanging.pushes) == 4
        assert all(row.status == "pending" for row in slow_rows)
        assert sum(row.attempts == 0 for row in slow_rows) == 2

        gate.set()
        wait_for(
            lambda: {row.status for row in deliveries_of(slow.id)} == {"sent"},
            what="the hanging partner's deliveries, once it answers",
        )
        assert all(received(hanging, slow, story.slug) for story in stories)
    finally:
        gate.set()
        disable_partner(slow.id)
        disable_partner(fast.id)
        hanging.close()
        healthy.close()


def test_a_publish_that_rolls_back_leaves_no_delivery(pipeline: Pipeline) -> None:
    from services.publish.service import publish_story
    from shared.db import session_scope

    hook = Hook()
    tag = unique("rollback")
    partner = new_partner(hook.url, tag=tag)
    story = insert_story(new_source(), tags=[tag])
    try:

        def publish_then_die() -> None:
            with session_scope() as session:
                publish_story(session, story_id=story.id, actor="test")
                assert deliveries_of(partner.id, story.id) == []  # not visible outside the transaction
                raise RuntimeError("the editor's request dies before commit")

        with pytest.raises(RuntimeError, match="dies before commit"):
            publish_then_die()
        assert deliveries_of(partner.id, story.id) == []
        assert publish(story.id) == "story.published"
        [row] = deliveries_of(partner.id, story.id)
        assert row.event == "story.published"
        wait_for(lambda: received(hook, partner, story.slug), what="the push after the real publish")
    finally:
        disable_partner(partner.id)
        hook.close()
