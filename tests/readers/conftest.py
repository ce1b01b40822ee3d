"""A real browser for the reader pages: Debian's Chromium driven by Playwright (no browser
download). Skipped, saying why, where /usr/bin/chromium or Playwright is missing; CI installs
both. The pipeline's API runs as a real HTTP server for it to read."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.pipeline import Pipeline
from tests.helpers.support import free_port, wait_for

CHROMIUM = os.environ.get("NEWSROOM_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless; one per module. Playwright's sync API runs an event loop in this
    thread while it is open, so it is closed before other modules' tests run theirs."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        pytest.skip(f"Playwright is not installed: {error}")
    with sync_playwright() as playwright:
        # Root in a container has no user namespaces for Chromium's sandbox.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site_url(pipeline: Pipeline) -> Iterator[str]:
    """The pipeline's API on a loopback port (pages link to each other by path)."""
    port = free_port()
    pipeline.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, what="the API to answer")
    try:
        yield base
    finally:
        pipeline.stop("api")
