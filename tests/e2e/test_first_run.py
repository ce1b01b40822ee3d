"""`newsroom up --demo` as a newcomer meets it: a screenful to read, the full log in a file."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.helpers.support import ROOT, free_port, wait_for

FIRST_SCREEN_SECONDS = 30
MAX_LINES = 80


class Up:
    """`newsroom up` with nothing configured but its data dir and port; its lines as they come."""

    def __init__(self, data: Path, *args: str) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSROOM_")}
        env.update(NEWSROOM_DATA_DIR=str(data), NEWSROOM_SITE_URL=self.base)
        command = [sys.executable, "-m", "services.cli", "up", "--port", str(port), "-c", "2", *args]
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(time.monotonic(),), daemon=True)
        self.reader.start()

    def _read(self, started: float) -> None:
        stream = self.process.stdout
        assert stream is not None
        with stream:
            for raw in iter(stream.readline, b""):
                self.lines.put((time.monotonic() - started, raw.decode(errors="replace").rstrip("\n")))

    def stop(self) -> int:
        """Ctrl-C, and its exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.reader.join(timeout=10)
        return code


def drain(lines: queue.Queue[tuple[float, str]]) -> list[tuple[float, str]]:
    taken = []
    while not lines.empty():
        taken.append(lines.get())
    return taken


def test_the_demo_shows_a_readable_screen_with_urls_and_tokens(tmp_path: Path) -> None:
    up = Up(tmp_path / "data", "--demo")
    process, base, lines = up.process, up.base, up.lines
    seen: list[tuple[float, str]] = []
    try:
        deadline = time.monotonic() + 90
        while not any("Ctrl-C stops everything" in line for _, line in seen):
            assert process.poll() is None, "\n".join(line for _, line in seen)
            assert time.monotonic() < deadline, "\n".join(line for _, line in seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        time.sleep(max(0.0, FIRST_SCREEN_SECONDS - seen[-1][0]))
        seen += drain(lines)
        assert httpx.get(f"{base}/").status_code == 200
    finally:
        code = up.stop()
    seen += drain(lines)
    text = "\n".join(line for _, line in seen)
    first_screen = [line for at, line in seen if at <= FIRST_SCREEN_SECONDS]
    assert len(first_screen) <= MAX_LINES, text
    assert f"Front page     {base}/" in text
    for role in ("wire", "editor", "admin"):
        assert re.search(rf"nr_{role}_\S+", text), f"no {role} token shown:\n{text}"
    assert "demo: published" in text and "signed pushes verified" in text
    # Libraries' banners and warnings stay in the full log.
    for noise in ("celery@", "[tasks]", "SecurityWarning", "HTTP Request:", "alembic", "Traceback"):
        assert noise not in text, f"{noise!r} reached the terminal:\n{text}"
    full_log = (tmp_path / "data" / "logs" / "newsroom.log").read_text(encoding="utf-8")
    assert "services.syndicate.partners" in full_log and "story.published" in full_log
    assert len(full_log.splitlines()) > 5 * len(seen)
    assert code == 0, text
    assert text.rstrip().endswith("stopped")


def test_verbose_brings_the_full_log_to_the_terminal(tmp_path: Path) -> None:
    up = Up(tmp_path / "data", "-v")
    process, base, lines = up.process, up.base, up.lines
    try:

        def ready() -> bool:
            assert process.poll() is None, "newsroom up -v exited"
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, what="newsroom up -v")
        wait_for(
            lambda: any("scheduler running" in line for _, line in list(lines.queue)),
            timeout=20,
            what="the scheduler's INFO line on the terminal",
        )
    finally:
        up.stop()
    text = "\n".join(line for _, line in drain(lines))
    assert " INFO " in text and "shared.scheduler" in text
    assert not (tmp_path / "data" / "logs" / "newsroom.log").exists()
