"""The reader pages in Chromium: the seed's lists and story page as a reader sees them, links
from a story to its tag and author pages, JSON-LD that the strict CSP lets be, and not one
console error or CSP violation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.text import slugify
from tests.helpers.newsdesk import insert_story, new_source, publish, unique
from tests.helpers.support import wait_for

pytestmark = pytest.mark.pipeline


def visit(browser: Any, url: str, shots: Path, name: str) -> tuple[Any, list[str]]:
    """A page opened in a fresh tab, its screenshot, and every console message and CSP violation."""
    page = browser.new_page(viewport={"width": 1000, "height": 1400})
    # Runs before the page's own content (the CSP does not apply to it): notes every violation.
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    problems: list[str] = []
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    answer = page.goto(url)
    assert answer is not None and answer.status == 200, url
    violations = page.evaluate("() => window.__csp || []")
    problems += [f"CSP: {v}" for v in violations]
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    return page, problems


def test_pages_in_chromium(browser: Any, site_url: str, tmp_path: Path) -> None:
    shots = Path(os.environ.get("NEWSROOM_TEST_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    token = unique("browser")
    tag, author, section = f"Kinburn {token}", f"Olena Petrenko {token}", f"Front {token}"
    story = insert_story(
        new_source(),
        tags=[tag],
        author_name=author,
        section=section,
        lede="The lede.",
        headline=f"Ukrainian flag raised on Kinburn Spit </script> {token}",
        body_html="<p>The flag went up at dawn.</p>",
    )
    publish(story.id, labels=["exclusive"])
    story_url = f"{site_url}/stories/{story.slug}"
    tag_path, author_path = f"/tags/{slugify(tag)}", f"/authors/{slugify(author)}"
    section_path = f"/sections/{slugify(section)}"
    for path in (f"/stories/{story.slug}", tag_path, author_path, section_path):
        wait_for(lambda path=path: httpx.get(f"{site_url}{path}").status_code == 200, what=path)
    wait_for(lambda: story.slug in httpx.get(f"{site_url}/").text, what="the story on /")

    front, problems = visit(browser, f"{site_url}/", shots, "front")
    item = front.locator(f'li.news-item:has(a[href="/stories/{story.slug}"])')
    assert item.locator(".label").inner_text() == "Exclusive"
    assert item.locator("a.news-headline").is_visible()
    assert front.locator(".day-header").first.is_visible()
    # The styles apply (the CSP allows the one stylesheet): time and headline side by side.
    assert item.evaluate("e => getComputedStyle(e).display") == "grid"
    assert front.locator('link[rel="alternate"][type="application/atom+xml"]').get_attribute("href") == (
        "/feeds/all.atom"
    )

    page, more = visit(browser, story_url, shots, "story")
    problems += more
    assert page.locator("h1.headline").inner_text() == story.headline
    assert page.locator(".labels .label").inner_text() == "Exclusive"
    article = json.loads(page.locator('script[type="application/ld+json"]').text_content() or "")
    assert article["@type"] == "NewsArticle" and article["headline"] == story.headline

    page.locator(f'.tag-list a[href="{tag_path}"]').click()
    page.wait_for_url(f"{site_url}{tag_path}")
    assert page.locator("h1.headline").inner_text() == tag
    assert page.locator(f'a.news-headline[href="/stories/{story.slug}"]').is_visible()
    page.go_back()
    page.locator(f'.byline a[href="{author_path}"]').click()
    page.wait_for_url(f"{site_url}{author_path}")
    assert page.locator("h1.headline").inner_text() == author

    for name, path in (("tag", tag_path), ("author", author_path), ("section", section_path)):
        listing, more = visit(browser, f"{site_url}{path}", shots, name)
        problems += more
        assert listing.locator(f'a.news-headline[href="/stories/{story.slug}"]').is_visible()
        assert listing.locator(".day-header").count() == 1
    assert problems == [], problems
