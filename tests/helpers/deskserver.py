"""The desk app served by uvicorn in a thread of the test process, and the browser it is shown in."""

from __future__ import annotations

import threading
import time

from tests.helpers.support import ROOT, free_port

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
AXE = ROOT / "tests" / "desk" / "vendor" / "axe.min.js"
OUTPUT = ROOT / "test-output" / "desk"


class DeskServer:
    """services.app served by uvicorn in a thread of the test process, on a loopback port."""

    def __init__(self) -> None:
        import uvicorn

        from shared.httpserver import HTTP_PROTOCOL

        self.port = free_port()
        config = uvicorn.Config(
            "services.app:app",
            host="127.0.0.1",
            port=self.port,
            http=HTTP_PROTOCOL,  # as `newsroom api` and `newsroom up` serve it
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
