"""The desk in a real browser: uvicorn on loopback serving the app, Chromium driven by Playwright.

The browser is Debian's Chromium at /usr/bin/chromium (never a downloaded one). Without
it the browser tests are skipped with the reason, unless NEWSROOM_REQUIRE_BROWSER=1 (as
in .ci/run), where they fail.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Pipeline

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
OUTPUT = ROOT / "test-output" / "desk"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class DeskServer:
    """services.app served by uvicorn in a thread of the test process, on a loopback port."""

    def __init__(self) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(
            "services.app:app",
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="desk-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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
