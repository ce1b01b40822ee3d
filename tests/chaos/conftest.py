"""A whole pipeline the test owns: its own Redis (AOF on), api, worker and scheduler processes.

Each scenario breaks something on purpose (kills, restarts, wipes, locks) and then
checks the invariants: every accepted post became exactly one story, every story
that should be published is, once, and every (partner, story, version, event) was
delivered, a repeat always carrying the same webhook-id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import Cluster
from tests.helpers.support import newsroom_environment, postgres_database

pytestmark = pytest.mark.chaos


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh pipeline on SQLite, with its own Redis; this process talks to the same database."""
    yield from _running(Cluster(tmp_path, f"sqlite:///{tmp_path / 'newsroom.db'}"))


def _running(cluster: Cluster) -> Iterator[Cluster]:
    from shared.migrate import upgrade

    with newsroom_environment(cluster.env):
        upgrade()
        cluster.start_all()
        try:
            yield cluster
        finally:
            cluster.stop_all()


@pytest.fixture
def cluster_pg(tmp_path: Path) -> Iterator[Cluster]:
    """The same pipeline on a PostgreSQL database of its own."""
    databases = postgres_database()
    try:
        yield from _running(Cluster(tmp_path, next(databases)))
    finally:
        next(databases, None)
