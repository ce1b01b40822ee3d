"""Publish's Celery tasks: thin wrappers that open a transaction and call the service."""

from __future__ import annotations

from services.publish import service
from shared.celery import newsroom_task
from shared.db import session_scope


@newsroom_task("publish.publish_story")
def publish_story(story_id: int, actor: str | None = None, expected_version: int | None = None) -> None:
    """Publish a story (an auto-publish source's item)."""
    with session_scope() as session:
        service.publish_story(session, story_id=story_id, actor=actor, expected_version=expected_version)


@newsroom_task("publish.publish_due")
def publish_due() -> None:
    """Publish the scheduled and embargoed stories whose time has come."""
    with session_scope() as session:
        service.publish_due(session)


@newsroom_task("publish.unpublish_story")
def unpublish_story(story_id: int, reason: str, actor: str | None = None) -> None:
    """Take a story down (the wire canceled it)."""
    with session_scope() as session:
        service.unpublish_story(session, story_id=story_id, reason=reason, actor=actor)
