"""CPU time used by the pipeline's processes (and PostgreSQL's), read from /proc.

A process's figure is its own user and system time, plus that of its children: those
still running (read one by one) and those it has reaped (the kernel adds them to its
``cutime``/``cstime``). So a worker's pool and PostgreSQL's backends, which come and go,
are all counted, and the load generator, which runs in the benchmark's own process, is not.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it are plain numbers.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_seconds(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds of a process and all its descendants, living and reaped."""
    children = _children() if children is None else children
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    own = sum(int(value) for value in fields[11:15]) / TICKS
    return own + sum(tree_seconds(child, children) for child in children.get(pid, []))


def postgres_postmaster(url: str) -> int | None:
    """The pid of the local PostgreSQL server's postmaster, if this machine runs it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            backend = connection.scalar(text("SELECT pg_backend_pid()"))
            # Read while the connection holds its backend: once closed, the backend exits.
            fields = _stat(int(backend)) if backend else None
    except Exception:
        return None
    finally:
        engine.dispose()
    return int(fields[1]) if fields else None


class CpuMeter:
    """CPU seconds per part between ``start`` and ``stop``."""

    def __init__(self, parts: dict[str, int]) -> None:
        self.parts = parts
        self.before: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        children = _children()
        return {name: tree_seconds(pid, children) for name, pid in self.parts.items()}

    def start(self) -> None:
        self.before = self.read()

    def stop(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per item (``count`` items) for each part, and their total."""
        after = self.read()
        per = {
            name: round((after[name] - self.before[name]) * 1000 / max(count, 1), 2) for name in self.parts
        }
        per["total"] = round(sum(per.values()), 2)
        return per


def _descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found = [pid]
    for child in children.get(pid, []):
        found += _descendants(child, children)
    return found


def runqueue_seconds(pids: list[int]) -> float:
    """Seconds the living threads of these processes and their descendants spent ready to run
    but waiting for a core (the kernel's schedstat): how contended the cores were for them."""
    children = _children()
    total = 0
    for pid in {one for root in pids for one in _descendants(root, children)}:
        try:
            threads = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for thread in threads:
            try:
                total += int((thread / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9
