"""The desk in a real browser: uvicorn on loopback serving the app, Chromium driven by Playwright.

The browser is Debian's Chromium at /usr/bin/chromium (never a downloaded one). Without
it the browser tests are skipped with the reason, unless NEWSROOM_REQUIRE_BROWSER=1 (as
in .ci/run), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.deskserver import CHROMIUM, CHROMIUM_ARGS, OUTPUT, DeskServer
from tests.helpers.pipeline import Pipeline


@pytest.fixture(scope="module")
def desk_server(pipeline: Pipeline) -> Iterator[DeskServer]:
    server = DeskServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(desk_server: DeskServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=desk_server.base, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium for one module.

    Playwright's sync API keeps an event loop running in the main thread while it is
    started; tests of other modules that call asyncio.run() must not run meanwhile.
    """
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("NEWSROOM_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and NEWSROOM_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(pipeline: Pipeline, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where this run keeps its screenshots (printed at the end of the module)."""
    folder = OUTPUT / pipeline.dialect
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"desk screenshots: {folder}")
