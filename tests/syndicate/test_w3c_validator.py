"""The RSS and Atom feeds through the W3C Feed Validation Service's own code.

Runs only when FEEDVALIDATOR_SRC names the ``src/`` folder of a w3c/feedvalidator checkout
(and its dependencies, such as html5lib, are installed); the validator runs in a subprocess
so that its module-level settings (socket timeouts, sys.path) stay out of the test process.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.syndicate.feeds import FeedFormat, FeedKey, feed_url, render_feed
from shared.config import Settings
from shared.models import Story, StoryLabel, StoryTag
from tests.helpers.w3c import SRC, validate

pytestmark = pytest.mark.skipif(
    not SRC or not (Path(SRC) / "feedvalidator" / "__init__.py").is_file(),
    reason="FEEDVALIDATOR_SRC does not point to the src/ of a w3c/feedvalidator checkout",
)

SITE = "https://news.example.com"
T0 = datetime(2025, 7, 18, 16, 16, tzinfo=UTC)


def stories() -> list[Story]:
    column = Story(
        id=1,
        slug="kyiv-column",
        revision=2,
        headline="Київ & <Львів>: 🎉 a column",
        lede="Лід: a < b & c 🎉",
        body_html="<p>Тіло &amp; <strong>більше</strong> 🎉</p>",
        body_text="Тіло & більше 🎉",
        author_name="Олена Петренко",
        author_slug="olena-petrenko",
        section="World",
        language="uk",
        published_at=T0,
        # Atom's updated keeps fractions of a second.
        updated_at=T0 + timedelta(hours=3, microseconds=250000),
        tags=[StoryTag(slug="kyiv", name="Київ")],
        labels=[StoryLabel(label="opinion"), StoryLabel(label="updated")],
        picture={
            "url": "https://cdn.example.com/kyiv.jpg",
            "media_type": "image/jpeg",
            "width": 1200,
            "height": 800,
            "size": 54321,
        },
    )
    wire = Story(
        id=2,
        slug="wire",
        revision=1,
        headline="Wire copy",
        lede=None,
        body_html="<p>" + "word " * 100 + "</p>",
        body_text="word " * 100,
        byline="Wire staff",
        published_at=T0 - timedelta(hours=1),
        tags=[],
        labels=[StoryLabel(label="breaking")],
        picture={"url": "/media/chart.png"},
    )
    return [column, wire]


@pytest.mark.parametrize("fmt", ["rss", "atom"])
@pytest.mark.parametrize("empty", [False, True], ids=["stories", "empty"])
def test_feed_has_no_w3c_errors(fmt: FeedFormat, empty: bool) -> None:
    settings = Settings(site_url=SITE, websub_hubs="https://hub.example.com/")
    key = FeedKey("section", "world")
    feed = render_feed(key, fmt, [] if empty else stories(), settings=settings)
    events = validate(feed, feed_url(key, fmt, settings=settings))
    errors = [event for event in events if event["level"] == "error"]
    assert errors == [], json.dumps(events, ensure_ascii=False, indent=1)
