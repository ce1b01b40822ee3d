"""Logging for every process: full logs to stderr or a file, and a short terminal view.

Run separately (``newsroom api``, ``worker``, ``scheduler``: containers, services) a
process logs everything at ``NEWSROOM_LOG_LEVEL`` to stderr. Under ``newsroom up`` on a
laptop the full log goes to ``NEWSROOM_LOG_FILE`` and the terminal shows only what a
person follows: records logged with ``extra=CONSOLE`` (a story published, feeds rendered,
a delivery sent or failed) and warnings of the project's own code.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

# Pass as ``extra=`` to put a record on the terminal of `newsroom up` too.
CONSOLE = {"console": True}

FILE_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
TERMINAL_FORMAT = "%(asctime)s  %(message)s"
WARNING_FORMAT = "%(asctime)s  %(levelname)s %(name)s: %(message)s"
OWN_LOGGERS = ("services", "shared", "newsroom")
# Libraries whose INFO lines are one per request or per plugin: kept out of every log.
CHATTY = ("httpx", "httpcore", "alembic.runtime.plugins")


# While set (the demo's first run), events stay in the full log; the demo prints its progress.
_held = threading.Event()


def hold_events(held: bool) -> None:
    """Keep event lines off the terminal (True) or show them again (False)."""
    if held:
        _held.set()
    else:
        _held.clear()


def events_held() -> bool:
    """Whether event lines are kept off the terminal for now."""
    return _held.is_set()


class _TerminalFilter(logging.Filter):
    """Records for a person: marked ones, and warnings from the project's own code."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", False):
            return not _held.is_set()
        return record.levelno >= logging.WARNING and record.name.split(".")[0] in OWN_LOGGERS


class _TerminalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TERMINAL_FORMAT, datefmt="%H:%M:%S")
        self._warning = logging.Formatter(WARNING_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self._warning.format(record)
        return super().format(record)


def log_file() -> Path | None:
    """Where the full log goes when the terminal shows only the short view."""
    path = os.environ.get("NEWSROOM_LOG_FILE")
    return Path(path) if path else None


def setup_logging() -> None:
    """Configure the root logger of this process (once, at start)."""
    level = os.environ.get("NEWSROOM_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    path = log_file()
    if path is None:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(stream)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    full = logging.FileHandler(path, encoding="utf-8")
    full.setFormatter(logging.Formatter(FILE_FORMAT))
    root.addHandler(full)
    terminal = logging.StreamHandler()
    terminal.addFilter(_TerminalFilter())
    terminal.setFormatter(_TerminalFormatter())
    root.addHandler(terminal)
    # Warnings (a worker run as root, a library's deprecation) go to the file, not the terminal.
    logging.captureWarnings(True)
