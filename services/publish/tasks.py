"""Publish's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.publish import service
from shared.batches import run_batch
from shared.db import session_scope
from shared.errors import Conflict, SkipEvent, TransientError
from shared.outbox import finish
from shared.tasknames import PUBLISH_DUE, PUBLISH_STORY, UNPUBLISH_STORY
from shared.tasks import batch_task, in_transaction, newsroom_task

# Auto-publishes taken in one transaction by a batch run.
BATCH = 50


@contextmanager
def _story_changed_is_not_a_failure(story_id: int) -> Iterator[None]:
    try:
        yield
    except Conflict as conflict:
        # A newer version arrived since this task was queued; its own task decides.
        raise SkipEvent(conflict.detail) from conflict
    except StaleDataError as error:
        raise TransientError(f"story {story_id} changed meanwhile") from error


@newsroom_task(PUBLISH_STORY)
def publish_story(story_id: int, actor: str | None = None, expected_version: int | None = None) -> None:
    """Publish a story (an auto-publish source's item); its embargo schedules it."""
    with session_scope() as session:
        _publish(session, {"story_id": story_id, "actor": actor, "expected_version": expected_version})
        finish(session)


@batch_task(PUBLISH_STORY)
def publish_stories() -> None:
    """Publish the waiting stories, up to ``BATCH`` of them in one transaction."""
    run_batch(PUBLISH_STORY, _publish, limit=BATCH)


@in_transaction(PUBLISH_STORY)
def publish_in_ingest(session: Session, kwargs: dict[str, Any]) -> None:
    """An auto-publish, in the worker's transaction that ingested the story."""
    _publish(session, kwargs)


def _publish(session: Session, kwargs: dict[str, Any], _: object = None) -> None:
    story_id = kwargs["story_id"]
    with _story_changed_is_not_a_failure(story_id):
        service.publish_story(
            session,
            story_id=story_id,
            actor=kwargs.get("actor"),
            expected_version=kwargs.get("expected_version"),
            automatic=True,
        )


@newsroom_task(PUBLISH_DUE)
def publish_due() -> None:
    """Publish the scheduled and embargoed stories whose time has come."""
    with session_scope() as session:
        service.publish_due(session)


@newsroom_task(UNPUBLISH_STORY)
def unpublish_story(story_id: int, reason: str, actor: str | None = None) -> None:
    """Take a story down (the wire canceled it)."""
    with _story_changed_is_not_a_failure(story_id), session_scope() as session:
        service.unpublish_story(session, story_id=story_id, reason=reason, actor=actor)
        finish(session)
