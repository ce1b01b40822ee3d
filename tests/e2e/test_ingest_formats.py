"""Every wire format, from real sample files, through the API and a real worker, on each database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Receipt, Revision, Story
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ROOT

pytestmark = pytest.mark.pipeline

DATA = Path(__file__).resolve().parent.parent / "data"


def ingest(
    pipeline: Pipeline, path: str | bytes, content_type: str | None, **source: Any
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Post a sample to a new source; the source's name, the 202 answer and the finished receipt."""
    name, wire = pipeline.source(**source)
    body = path if isinstance(path, bytes) else (DATA / path).read_bytes()
    headers = {**wire, **({"Content-Type": content_type} if content_type else {})}
    answer = pipeline.client.post(f"/v1/wire/{name}", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    receipt = pipeline.wait_receipt(accepted["receipt"], wire)
    with session_scope(read_only=True) as session:
        stored = session.get_one(Receipt, accepted["receipt"])
        assert bytes(stored.body) == body  # the raw post, untouched
    return name, accepted, receipt


def story(story_id: int) -> Story:
    with session_scope(read_only=True) as session:
        row = session.get_one(Story, story_id)
        session.expunge(row)  # tags and labels are loaded with it; keep it readable after the rollback
        return row


def outcomes(receipt: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(item["guid"], item["outcome"]) for item in receipt["items"]]


def test_ninjs_2_with_featured_picture(pipeline: Pipeline) -> None:
    _, accepted, receipt = ingest(pipeline, "ninjs/007_multimedia.json", "application/ninjs+json")
    assert accepted["items"] == 1
    assert receipt["status"] == "done"
    assert outcomes(receipt) == [("http://ninjs.example.com/newsitems/20130709cplx456", "created")]
    row = story(receipt["items"][0]["story_id"])
    assert row.status == "ingested"
    assert row.headline == "Captain of wrecked cruise ship on trial in Italy"
    assert row.byline == row.author_name == "Paulo Santalucia and Frances d'Emilio"
    assert row.author_slug == "paulo-santalucia-and-frances-demilio"
    assert row.version_created == datetime(2013, 7, 9, 10, 39, tzinfo=UTC)
    assert row.language == "en"
    assert row.slug.startswith("captain-of-wrecked-cruise-ship-on-trial-in-italy")
    assert row.picture is not None
    assert row.picture["url"] == "http://hosted.ap.org/photos/2/2643c588-dc8d-4923-bebd-e3b904edbb3a-big.jpg"
    assert (row.picture["width"], row.picture["height"], row.picture["credit"]) == (
        429,
        281,
        "Paulo Santalucia",
    )
    with session_scope(read_only=True) as session:
        revisions = session.execute(
            select(Revision.number, Revision.action).where(Revision.story_id == row.id)
        )
        assert [tuple(r) for r in revisions] == [(1, "ingested")]


def test_ninjs_2_array_of_documentation_examples(pipeline: Pipeline) -> None:
    names = (
        "001_simple_example.json",
        "004_simple_text_article.json",
        "005_complex_text_article.json",
        "003_associations_example.json",
        "006_photo_only.json",
    )
    entries = [json.loads((DATA / "ninjs" / name).read_text()) for name in names]
    _, accepted, receipt = ingest(pipeline, json.dumps(entries).encode(), "application/json")
    assert accepted["items"] == 5
    assert receipt["status"] == "done"
    # 004 has 001's uri and versioncreated but other text: the same version, so not newer.
    assert [item["outcome"] for item in receipt["items"]] == [
        "created",
        "stale",
        "created",
        "created",
        "rejected",
    ]
    assert receipt["items"][1]["story_id"] == receipt["items"][0]["story_id"]
    assert receipt["items"][4]["error"] == (
        "item 4 (http://ninjs.example.com/newsitems/20130709simpPh123) [body]: item has no body"
    )
    assert story(receipt["items"][2]["story_id"]).body_html.count("<p>") == 4
    associations = story(receipt["items"][3]["story_id"])
    assert associations.wire_version == 1
    assert associations.picture == {
        "url": "http://mms.businesswire.com/media/newsItemId/en/369394/3/0025lf.jpg",
        "media_type": None,
        "width": None,
        "height": None,
        "size": None,
        "caption": None,
        "credit": None,
    }
    # 001 and 005 share a headline: each story still has its own slug.
    first, medium = story(receipt["items"][0]["story_id"]), story(receipt["items"][2]["story_id"])
    assert first.headline == medium.headline
    assert first.slug != medium.slug


def test_ninjs_1_naive_times_in_the_source_zone_and_sanitised(pipeline: Pipeline) -> None:
    _, _, receipt = ingest(
        pipeline, "ingest/ninjs-1.x.json", "application/ninjs+json", timezone="Europe/Kyiv"
    )
    assert outcomes(receipt) == [("urn:newsroom:test:ninjs1:kyiv-metro", "created")]
    row = story(receipt["items"][0]["story_id"])
    assert row.headline == "Kyiv metro adds a new line"
    # "2025-04-09T10:52:00" without an offset, read in Kyiv (UTC+3), stored in UTC.
    assert row.version_created == datetime(2025, 4, 9, 7, 52, tzinfo=UTC)
    assert row.first_created == datetime(2025, 4, 9, 6, 15, tzinfo=UTC)
    assert row.embargo_until == datetime(2025, 4, 9, 12, 0, tzinfo=UTC)
    for hostile in ("onclick", "<script", "javascript:", "onerror", "alert("):
        assert hostile not in row.body_html
    assert '<a href="https://kyivcity.gov.ua/" rel="noopener noreferrer">council</a>' in row.body_html
    assert (row.section, row.tag_names, row.language) == ("kyiv", ["Transport", "Infrastructure"], "uk")
    assert row.picture is not None and row.picture["url"] == "https://img.example.org/metro.jpg"


def test_ninjs_3_canceled_opinion(pipeline: Pipeline) -> None:
    _, _, receipt = ingest(pipeline, "ingest/ninjs-3.x.json", "application/ninjs+json")
    assert outcomes(receipt) == [("urn:newsroom:test:ninjs3:orban", "created")]
    row = story(receipt["items"][0]["story_id"])
    # A canceled item is never published.
    assert row.status == "unpublished"
    assert row.label_names == ["opinion"]
    assert (row.wire_version, row.version_created) == (7, datetime(2025, 7, 18, 14, 21, tzinfo=UTC))
    assert row.picture is not None and row.picture["url"] == "https://img.example.org/orban-large.webp"


def test_newsml_g2_news_item(pipeline: Pipeline) -> None:
    _, accepted, receipt = ingest(
        pipeline, "newsml-g2/LISTING_2_NewsML-G2_Text_Document.xml", "application/vnd.iptc.g2.newsitem+xml"
    )
    assert accepted["items"] == 1
    assert outcomes(receipt) == [("urn:newsml:acmenews.com:20161121:US-FINANCE-FED", "created")]
    row = story(receipt["items"][0]["story_id"])
    assert row.headline == 'Fed to halt QE to avert "bubble"'
    assert (row.wire_version, row.author_name, row.language) == (11, "Meredith Jameson", "en-US")
    assert row.version_created == datetime(2018, 11, 21, 21, 25, 32, tzinfo=UTC)
    assert row.section == "economy-business-and-finance"
    assert row.body_text.startswith("(New York, NY - October 21)")


def test_newsml_g2_news_message_refuses_only_the_bad_items(pipeline: Pipeline) -> None:
    message = "application/vnd.iptc.g2.newsmessage+xml"
    _, accepted, receipt = ingest(pipeline, "ingest/newsml-message.xml", message, timezone="Europe/Kyiv")
    assert accepted["items"] == 5
    assert receipt["status"] == "done"
    assert [item["outcome"] for item in receipt["items"]] == [
        "created",
        "created",
        "created",
        "rejected",
        "rejected",
    ]
    assert "item has no headline" in receipt["items"][3]["error"]
    assert "[versionCreated]: unparseable time in versionCreated" in receipt["items"][4]["error"]
    pokrovsk, orban, ramstein = (story(item["story_id"]) for item in receipt["items"][:3])
    assert pokrovsk.picture is not None and pokrovsk.picture["url"] == "https://img.example.org/pokrovsk.jpg"
    assert (pokrovsk.section, pokrovsk.author_name) == ("war", "Ivan Shevchenko")
    assert (orban.status, orban.label_names) == ("unpublished", ["opinion"])
    assert ramstein.status == "ingested"


def test_rss_document(pipeline: Pipeline) -> None:
    _, accepted, receipt = ingest(pipeline, "ingest/rss.xml", "application/rss+xml", format="rss")
    assert accepted["items"] == 4
    assert [item["outcome"] for item in receipt["items"]] == ["created", "created", "rejected", "rejected"]
    kinburn = story(receipt["items"][0]["story_id"])
    assert kinburn.guid == "wire-2025-07-18-kinburn"
    assert "<script" not in kinburn.body_html and "onerror" not in kinburn.body_html
    assert kinburn.first_created == datetime(2025, 7, 18, 15, 54, tzinfo=UTC)
    assert (kinburn.section, kinburn.tag_names) == ("war", ["Black Sea", "Navy"])
    assert kinburn.picture is not None
    picture = kinburn.picture
    assert (picture["url"], picture["caption"], picture["credit"]) == (
        "https://img.example.org/kinburn-large.jpg",
        "The flag over Kinburn Spit",
        "Navy of Ukraine",
    )
    nato = story(receipt["items"][1]["story_id"])
    assert nato.picture is not None and nato.picture["url"] == "https://img.example.org/nato.png"


def test_atom_document(pipeline: Pipeline) -> None:
    _, accepted, receipt = ingest(pipeline, "ingest/atom.xml", "application/atom+xml", format="atom")
    assert accepted["items"] == 3
    assert [item["outcome"] for item in receipt["items"]] == ["created"] * 3
    tomahawks = story(receipt["items"][0]["story_id"])
    assert tomahawks.headline == "Tomahawks could be game-changer for Ukraine"
    assert "javascript:" not in tomahawks.body_html
    assert (tomahawks.section, tomahawks.language, tomahawks.author_slug) == (
        "world",
        "uk",
        "taras-hrytsenko",
    )
    assert tomahawks.version_created == datetime(2025, 7, 18, 15, 5, tzinfo=UTC)


def test_column_is_always_opinion(pipeline: Pipeline) -> None:
    column = json.loads((DATA / "ingest/column-portnikov.json").read_text()) | {"section": "world"}
    _, _, receipt = ingest(pipeline, json.dumps(column).encode(), "application/vnd.newsroom.column+json")
    [item] = receipt["items"]
    assert item["outcome"] == "created"
    row = story(item["story_id"])
    assert row.label_names == ["opinion"]
    assert (row.genre, row.section) == ("opinion", "world")
    assert (row.author_name, row.author_slug) == ("Vitaly Portnikov", "vitaly-portnikov")
    assert row.author_bio == "journalist, National Shevchenko Prize laureate"
    assert row.disclaimer is not None and row.source_url == "https://example.org/original"
    assert row.first_created == datetime(2025, 4, 9, 7, 52, tzinfo=UTC)


def test_body_format_falls_back_to_the_source_format(pipeline: Pipeline) -> None:
    _, _, receipt = ingest(pipeline, "ingest/column-portnikov.json", None, format="column")
    assert [item["outcome"] for item in receipt["items"]] == ["created"]
    assert story(receipt["items"][0]["story_id"]).label_names == ["opinion"]


def newsroom(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, **pipeline.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_ingests_a_local_file_and_retries_a_stored_post(pipeline: Pipeline) -> None:
    name, _ = pipeline.source(format="atom")
    done = newsroom(pipeline, "ingest", str(DATA / "ingest/atom.xml"), "--source", name, "--wait", "20")
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert (receipt["http_status"], receipt["status"]) == (202, "done")
    assert [item["outcome"] for item in receipt["items"]] == ["created"] * 3

    again = newsroom(pipeline, "ingest", "--retry", str(receipt["receipt"]), "--wait", "20")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"receipt {receipt['receipt']} queued again")
    retried = json.loads(again.stdout.partition("\n")[2])
    assert retried["status"] == "done"
    assert [item["outcome"] for item in retried["items"]] == ["unchanged"] * 3
    with session_scope(read_only=True) as session:
        assert session.get_one(Receipt, receipt["receipt"]).attempts == 2
        count = session.scalar(
            select(func.count())
            .select_from(Story)
            .where(
                Story.guid == "tag:wire.example.org,2025:gazprom",
                Story.source_id == session.get_one(Receipt, receipt["receipt"]).source_id,
            )
        )
    assert count == 1

    refused = newsroom(
        pipeline, "ingest", str(DATA / "ingest/rss.xml"), "--source", name, "--content-type", "text/csv"
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["http_status"] == 415
