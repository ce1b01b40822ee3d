"""Rendering from many threads at once (the API renders a feed on its first request, in a threadpool).

feedgen writes RSS dates by switching the process-wide locale to C and back; without the
renderer's lock, two threads interleaving can leave the process in the wrong locale.
"""

from __future__ import annotations

import locale
import sys
import threading
from datetime import UTC, datetime, timedelta

from services.syndicate.feeds import FeedKey, render_feed
from shared.config import Settings
from shared.models import Story, StoryLabel, StoryTag

T0 = datetime(2025, 7, 18, 16, 16, tzinfo=UTC)
THREADS = 8
RENDERS = 8


def stories() -> list[Story]:
    return [
        Story(
            id=n,
            slug=f"story-{n}",
            revision=1,
            headline=f"Київ & <Львів> 🎉 {n}",
            lede="a < b & c",
            body_html="<p>Тіло &amp; 🎉</p>",
            body_text="Тіло & 🎉",
            author_name="Олена",
            author_slug="olena",
            section="World",
            language="uk",
            published_at=T0 - timedelta(days=n),
            tags=[StoryTag(slug="kyiv", name="Київ")],
            labels=[StoryLabel(label="breaking")],
        )
        for n in range(50)
    ]


def test_rss_renders_the_same_bytes_from_many_threads_and_leaves_the_locale_alone() -> None:
    settings = Settings(site_url="https://news.example.com")
    expected = render_feed(FeedKey("all"), "rss", stories(), settings=settings).body
    saved = locale.setlocale(locale.LC_ALL)
    # A process locale other than C, as a server's often is, and threads switching often.
    before = locale.setlocale(locale.LC_ALL, "C.UTF-8")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        bodies = _render_in_threads(settings)
    finally:
        sys.setswitchinterval(interval)
        after = locale.setlocale(locale.LC_ALL)
        locale.setlocale(locale.LC_ALL, saved)
    assert len(bodies) > THREADS
    assert all(body == expected for body in bodies)
    assert b"<pubDate>Fri, 18 Jul 2025 16:16:00 +0000</pubDate>" in expected
    assert after == before


def _render_in_threads(settings: Settings) -> list[bytes]:
    bodies: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work() -> None:
        try:
            start.wait()
            for n in range(RENDERS):
                fmt = "atom" if n % 3 == 2 else "rss"
                feed = render_feed(FeedKey("all"), fmt, stories(), settings=settings)
                if fmt == "rss":
                    bodies.append(feed.body)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return bodies
