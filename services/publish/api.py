"""The editor's API: list, read, edit, publish and unpublish stories."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.publish import service
from shared.config import get_settings
from shared.db import session_scope
from shared.errors import Conflict, SkipEvent, Unprocessable
from shared.models import Delivery, Partner, Revision, Story
from shared.web import MAX_ID, EditorDep, IdPath, error_responses

router = APIRouter(
    prefix="/v1/stories", tags=["publish"], responses=error_responses(401, 403, 404, 409, 422, 429)
)


class PublishRequest(BaseModel):
    """The body of POST /v1/stories/{id}/publish."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] | None = None
    at: str | None = None
    expected_version: int | None = Field(default=None, ge=0, le=MAX_ID)
    silent: bool = False
    note: str | None = Field(default=None, max_length=2000)


class UnpublishRequest(BaseModel):
    """The body of POST /v1/stories/{id}/unpublish."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)
    expected_version: int | None = Field(default=None, ge=0, le=MAX_ID)


@contextmanager
def _writing(story_id: int) -> Iterator[Session]:
    """A write transaction whose lost race with another writer is a 409, not a 500."""
    try:
        with session_scope() as session:
            yield session
    except StaleDataError as error:
        raise Conflict(f"story {story_id} changed meanwhile; read it again") from error


def parse_at(value: str | None) -> datetime | None:
    """An ISO 8601 time with an offset; 422 naming the field otherwise."""
    if value is None or value == "":
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise Unprocessable(f"at: not an ISO 8601 time: {value!r}") from error
    if when.tzinfo is None:
        raise Unprocessable(f"at: {value!r} has no UTC offset")
    return when


def story_view(story: Story, *, full: bool = False) -> dict[str, Any]:
    """A story as the editor's API shows it."""
    site = get_settings().site_url
    view: dict[str, Any] = {
        "id": story.id,
        "guid": story.guid,
        "slug": story.slug,
        "url": f"{site}/stories/{story.slug}",
        "status": story.status,
        "version": story.revision,
        "headline": story.headline,
        "lede": story.lede,
        "section": story.section,
        "genre": story.genre,
        "tags": story.tag_names,
        "labels": story.label_names,
        "author": {"name": story.author_name, "slug": story.author_slug, "bio": story.author_bio},
        "byline": story.byline,
        "language": story.language,
        "published_at": _iso(story.published_at),
        "updated_at": _iso(story.updated_at),
        "publish_at": _iso(story.publish_at),
        "embargo_until": _iso(story.embargo_until),
        "unpublished_at": _iso(story.unpublished_at),
        "correction_note": story.correction_note,
        "has_pending_changes": bool({k for k in (story.pending or {}) if k != "_publish"}),
    }
    if full:
        view.update(
            body_html=story.body_html,
            source_url=story.source_url,
            disclaimer=story.disclaimer,
            picture=story.picture,
            pending=story.pending,
        )
    return view


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _detail(session: Session, story: Story) -> dict[str, Any]:
    view = story_view(story, full=True)
    revisions = session.scalars(
        select(Revision).where(Revision.story_id == story.id).order_by(Revision.number)
    )
    view["revisions"] = [
        {"version": r.number, "action": r.action, "actor": r.actor, "note": r.note, "at": _iso(r.created_at)}
        for r in revisions
    ]
    deliveries = session.execute(
        select(Delivery, Partner.name)
        .join(Partner, Partner.id == Delivery.partner_id)
        .where(Delivery.story_id == story.id)
        .order_by(Delivery.created_at)
    )
    view["deliveries"] = [
        {
            "id": d.id,
            "partner": name,
            "event": d.event,
            "version": d.story_revision,
            "status": d.status,
            "attempts": d.attempts,
        }
        for d, name in deliveries
    ]
    return view


@router.get("")
def list_stories(
    caller: EditorDep,
    status: str | None = None,
    section: str | None = None,
    q: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    """The editor's list, newest first. Role: editor or admin."""
    with session_scope(read_only=True) as session:
        stories = service.list_stories(
            session, status=status, section=section, q=q, limit=limit, offset=offset
        )
        return {"stories": [story_view(story) for story in stories]}


@router.get("/{story_id}")
def get_story(story_id: IdPath, caller: EditorDep) -> dict[str, Any]:
    """A story with its revisions, labels and deliveries. Role: editor or admin."""
    with session_scope(read_only=True) as session:
        return _detail(session, service.get_story(session, story_id))


@router.patch("/{story_id}", responses=error_responses(400, 413))
def patch_story(story_id: IdPath, changes: dict[str, Any], caller: EditorDep) -> dict[str, Any]:
    """Edit a story: a new revision, shown on a published story after the next publish.

    Role: editor or admin.
    """
    expected = changes.pop("expected_version", None)
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
        raise Unprocessable("expected_version: an integer")
    with _writing(story_id) as session:
        story = service.edit_story(
            session, story_id=story_id, changes=changes, expected_version=expected, actor=caller.actor
        )
        return story_view(story, full=True)


@router.post("/{story_id}/publish", status_code=202, responses=error_responses(400, 413))
async def publish(story_id: IdPath, body: PublishRequest, caller: EditorDep) -> JSONResponse:
    """Publish, schedule or republish a story; 202 with the story and the event announced.

    Role: editor or admin.
    """
    at = parse_at(body.at)
    view = await run_in_threadpool(_publish, story_id, body, at, caller.actor)
    return JSONResponse(view, status_code=202)


def _publish(story_id: int, body: PublishRequest, at: datetime | None, actor: str) -> dict[str, Any]:
    event: str | None = None
    try:
        with _writing(story_id) as session:
            outcome = service.publish_story(
                session,
                story_id=story_id,
                actor=actor,
                labels=body.labels,
                at=at,
                expected_version=body.expected_version,
                silent=body.silent,
                note=body.note,
            )
            event = outcome.event
            view = story_view(outcome.story)
    except SkipEvent:
        # Already published as asked (maybe by a concurrent request): nothing changed.
        with session_scope(read_only=True) as session:
            view = story_view(service.get_story(session, story_id))
    return {**view, "event": event, "status_url": f"/v1/stories/{story_id}"}


@router.post("/{story_id}/unpublish", status_code=202, responses=error_responses(400, 413))
def unpublish(story_id: IdPath, body: UnpublishRequest, caller: EditorDep) -> JSONResponse:
    """Take a story down from every page, feed and partner (a second time changes nothing).

    Role: editor or admin.
    """
    with _writing(story_id) as session:
        outcome = service.unpublish_story(
            session,
            story_id=story_id,
            reason=body.reason,
            actor=caller.actor,
            expected_version=body.expected_version,
        )
        view = {**story_view(outcome.story), "event": outcome.event, "status_url": f"/v1/stories/{story_id}"}
    return JSONResponse(view, status_code=202)
