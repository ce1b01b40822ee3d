"""A scheduled story survives Redis restarting empty: the schedule lives in the database.

The tests' shared Redis is left alone: the pipeline's worker and scheduler are
stopped, and a worker and a scheduler of this test's own run on a private Redis,
which is stopped and started again (without persistence, so empty) before the time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.redis import EmbeddedRedis
from tests.helpers.desk import (
    WORKER,
    Desk,
    TaggedPartner,
    assert_published_once,
    make_desk,
    soon,
    tagged_partner,
    watch_until_published,
)
from tests.helpers.pipeline import Pipeline
from tests.helpers.support import ROOT, wait_for

pytestmark = pytest.mark.pipeline


@pytest.fixture
def desk(pipeline: Pipeline) -> Desk:
    return make_desk(pipeline)


@pytest.fixture
def partner(desk: Desk) -> Iterator[TaggedPartner]:
    with tagged_partner(desk) as tagged:
        yield tagged


class PrivatePipeline:
    """A worker and a scheduler on a Redis of their own, over the pipeline's database."""

    def __init__(self, pipeline: Pipeline, directory: Path) -> None:
        self.redis = EmbeddedRedis(directory / "redis", appendonly=False)
        self.env = {**os.environ, **pipeline.env, "NEWSROOM_REDIS_URL": self.redis.start()}
        self.log = directory / "private.log"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> None:
        with open(self.log, "ab") as log:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.cli", *args],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=ROOT,
                )
            )

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def restart_redis(self) -> None:
        self.redis.stop()
        self.redis.start()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        self.redis.stop()


def test_schedule_survives_redis_restarting_empty(
    pipeline: Pipeline, desk: Desk, partner: TaggedPartner, tmp_path: Path
) -> None:
    pipeline.stop("scheduler")
    pipeline.stop("worker")
    private = PrivatePipeline(pipeline, tmp_path)
    try:
        private.start(*WORKER)
        private.start("scheduler")
        wait_for(lambda: " ready." in private.read_log(), what="the private worker connected")
        story_id = desk.story()
        at = soon(3)
        assert desk.publish(story_id, at=at.isoformat())["status"] == "scheduled"
        private.restart_redis()
        assert desk.get(story_id)["status"] == "scheduled"
        watch_until_published(desk, [story_id], at, timeout=60)
        assert_published_once(desk, partner, story_id, at)
        log = private.read_log()
        # The worker did lose its broker, and the publish came after it reconnected.
        assert log.index("Connection to broker lost") < log.index("Task publish.publish_due[")
    finally:
        private.stop()
        pipeline.start("worker", *WORKER)
        pipeline.start("scheduler", "scheduler")
