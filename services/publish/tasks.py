"""Publish's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm.exc import StaleDataError

from services.publish import service
from shared.celery import newsroom_task
from shared.db import session_scope
from shared.errors import Conflict, SkipEvent, TransientError


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
def publish_story(story_id: int, actor: str | None = None, expected_version: int | None = None) -> None:
    """Publish a story (an auto-publish source's item); its embargo schedules it."""
    with _story_changed_is_not_a_failure(story_id), session_scope() as session:
        service.publish_story(
            session, story_id=story_id, actor=actor, expected_version=expected_version, automatic=True
        )


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
