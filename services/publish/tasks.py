"""Publish's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.publish import service
from shared.celery import newsroom_task, run_gathered
from shared.db import session_scope
from shared.errors import Conflict, SkipEvent, TransientError

# Auto-publishes taken in one transaction by a gathered run.
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


@newsroom_task("publish.publish_story")
def publish_story(
    story_id: int | None = None, actor: str | None = None, expected_version: int | None = None
) -> None:
    """Publish a story (an auto-publish source's item); its embargo schedules it.

    Without a story, a batch of the gathered ones waiting, in one transaction
    (``shared.celery.run_gathered``).
    """
    if story_id is None:
        run_gathered("publish.publish_story", _publish, limit=BATCH)
        return
    with session_scope() as session:
        _publish(session, {"story_id": story_id, "actor": actor, "expected_version": expected_version})


def _publish(session: Session, kwargs: dict[str, Any], _: object = None) -> None:
    story_id = kwargs["story_id"]
    with _story_changed_is_not_a_failure(story_id):
        service.publish_story(session, story_id=story_id, actor=kwargs.get("actor"),
                              expected_version=kwargs.get("expected_version"), automatic=True)  # fmt: skip


@newsroom_task("publish.publish_due")
def publish_due() -> None:
    """Publish the scheduled and embargoed stories whose time has come."""
    with session_scope() as session:
        service.publish_due(session)


@newsroom_task("publish.unpublish_story")
def unpublish_story(story_id: int, reason: str, actor: str | None = None) -> None:
    """Take a story down (the wire canceled it)."""
    with _story_changed_is_not_a_failure(story_id), session_scope() as session:
        service.unpublish_story(session, story_id=story_id, reason=reason, actor=actor)
