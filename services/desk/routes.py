"""The editors' desk at /desk: sign in, watch the wire arrive, read, compare, edit, publish.

Pages are rendered on the server and every action is a plain form (POST, then a redirect
to a page), calling the publish, ingest and syndicate functions directly as the CLI does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.desk import sessions, views
from services.desk.sessions import DeskSession
from services.desk.stream import incoming_events
from services.ingest.service import list_sources, source_view
from services.publish import service as publish
from services.syndicate.pages import render_story_page
from services.syndicate.partners import replay
from shared.auth import create_token
from shared.config import get_settings
from shared.db import session_scope
from shared.errors import Conflict, NewsroomError, SkipEvent
from shared.models import Delivery, Partner, Revision, Source, Story, Token, utcnow
from shared.text import slugify

log = logging.getLogger(__name__)

router = APIRouter(prefix="/desk", include_in_schema=False)

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src * data:; "
        "connect-src 'self'; form-action 'self'; frame-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
STATIC = {"desk.css": "text/css; charset=utf-8", "desk.js": "text/javascript; charset=utf-8"}

env = Environment(
    loader=PackageLoader("services.desk", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@cache
def _static(name: str) -> bytes:
    return files("services.desk").joinpath(f"static/{name}").read_bytes()


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = get_settings()
    body = env.get_template(template).render(
        site_title=settings.site_title, timezone=settings.timezone, **context
    )
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def _signed_in(request: Request) -> DeskSession:
    """The session, or a redirect to the sign-in page: signed out, the desk shows nothing."""
    desk = sessions.current(request)
    if desk is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(
            303,
            "sign in first",
            headers={"Location": "/desk/signin?" + urlencode({"next": target}), "Cache-Control": "no-store"},
        )
    return desk


def _posting(request: Request, csrf: str | None) -> DeskSession:
    """A form's POST: from this site, signed in, with the session's CSRF token."""
    sessions.check_origin(request)
    desk = sessions.current(request)
    if desk is None:
        raise HTTPException(403, "refused: signed out; sign in again")
    sessions.check_csrf(desk.csrf, csrf)
    return desk


def _admin(desk: DeskSession) -> None:
    if not desk.is_admin:
        raise HTTPException(403, "this needs an admin token")


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/desk") and not value.startswith("//") else "/desk"


# --- static files --------------------------------------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The desk's stylesheet and script (the only ones its CSP allows)."""
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    return Response(
        _static(name),
        media_type=STATIC[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# --- signing in and out ----------------------------------------------------------------------


@router.get("/signin")
def signin_page(request: Request, next: str | None = None) -> Response:
    """The sign-in form."""
    if sessions.current(request) is not None:
        return _redirect(_safe_next(next))
    token = sessions.signin_csrf(request)
    response = _page("signin.html", csrf=token, next=_safe_next(next), error=None, desk=None, flashes=[])
    sessions.set_signin_cookie(response, token)
    return response


@router.post("/signin")
def signin(
    request: Request,
    token: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/desk",
) -> Response:
    """Exchange an editor's or admin's token for a session cookie."""
    sessions.check_origin(request)
    sessions.check_csrf(request.cookies.get(sessions.SIGNIN_COOKIE) or "", csrf)
    try:
        session_id = sessions.sign_in(token)
    except sessions.SignInRefused as refusal:
        return _page(
            "signin.html", 403, csrf=csrf, next=_safe_next(next), error=str(refusal), desk=None, flashes=[]
        )
    response = _redirect(_safe_next(next))
    sessions.set_session_cookie(response, session_id)
    return response


@router.post("/signout")
def signout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session on the server and forget the cookie."""
    desk = _posting(request, csrf)
    sessions.sign_out(desk)
    response = _redirect("/desk/signin")
    sessions.clear_session_cookie(response)
    return response


# --- incoming --------------------------------------------------------------------------------


def _filters(
    source: str | None, section: str | None, status: str | None, q: str | None, story: int | None = None
) -> views.Filters:
    return views.Filters(
        source=(source or "")[:100],
        section=(section or "")[:100],
        status=status if status in views.DESK_STATUSES else "",
        q=(q or "")[:200],
        story=story,
    )


def _render_row(row: views.Row) -> str:
    return env.get_template("row.html").render(row=row)


@router.get("")
def incoming(
    request: Request,
    source: str | None = None,
    section: str | None = None,
    status: str | None = None,
    q: str | None = None,
) -> Response:
    """Incoming: the newest stories and versions, live."""
    desk = _signed_in(request)
    filters = _filters(source, section, status, q)
    settings = get_settings()
    now = utcnow()
    with session_scope(read_only=True) as session:
        rows = views.incoming(session, filters, settings.tz, now)
        last = views.last_revision_id(session)
        choices = views.filter_choices(session)
    stream = "/desk/stream?" + urlencode({**filters.query, "after": last})
    return _page(
        "incoming.html",
        desk=desk,
        flashes=sessions.take_flashes(desk),
        rows=rows,
        filters=filters,
        choices=choices,
        stream=stream,
        render_row=_render_row,
    )


@router.get("/stream")
async def stream(
    request: Request,
    after: Annotated[int, Query(ge=0)] = 0,
    source: str | None = None,
    section: str | None = None,
    status: str | None = None,
    q: str | None = None,
    story: int | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Server-sent events: a row for each story changed after the last revision the browser saw."""
    desk = await run_in_threadpool(sessions.current, request)
    if desk is None:
        return Response("sign in first", status_code=401, media_type="text/plain")
    if last_event_id and last_event_id.isdigit():
        after = int(last_event_id)  # a reconnect: catch up from what the browser last got
    events = incoming_events(desk, after, _filters(source, section, status, q, story), _render_row)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# --- a story ---------------------------------------------------------------------------------


def _snapshot(session: Session, story_id: int, number: int) -> dict[str, Any] | None:
    return session.scalar(
        select(Revision.snapshot).where(Revision.story_id == story_id, Revision.number == number)
    )


def _story_context(
    session: Session,
    story_id: int,
    desk: DeskSession,
    *,
    diff_from: int | None = None,
    diff_to: int | None = None,
    conflict: dict[str, Any] | None = None,
    draft: dict[str, Any] | None = None,
) -> dict[str, Any]:
    settings = get_settings()
    tz, now = settings.tz, utcnow()
    story = publish.get_story(session, story_id)
    source = session.get_one(Source, story.source_id)
    history = views.revisions(session, story.id)
    numbers = [revision.number for revision in history]
    diff = None
    if numbers:
        to = diff_to if diff_to in numbers else numbers[-1]
        older = [n for n in numbers if n < to]
        frm = diff_from if diff_from in numbers else (older[-1] if older else to)
        snapshots = {r.number: r.snapshot for r in history}
        diff = {"from": frm, "to": to, "fields": views.diff_snapshots(snapshots[frm], snapshots[to])}
    preview = render_story_page(views.preview_story(story), [], settings=settings)
    current = {
        "headline": views.effective(story, "headline"),
        "lede": views.effective(story, "lede") or "",
        "section": views.effective(story, "section") or "",
        "tags": ", ".join(views.effective(story, "tags")),
    }
    return {
        "desk": desk,
        "flashes": sessions.take_flashes(desk),
        "story": story,
        "source": source,
        "status": views.desk_status(story, now),
        "new_version": story.status == "published" and bool(views.pending_changes(story)),
        "pending_fields": sorted(views.pending_changes(story)),
        "times": {
            "published": views.full_time(story.published_at, tz),
            "updated": views.full_time(story.updated_at, tz),
            "publish_at": views.full_time(story.publish_at, tz),
            "embargo_until": views.full_time(story.embargo_until, tz),
            "unpublished": views.full_time(story.unpublished_at, tz),
        },
        "embargoed": bool(story.embargo_until and story.embargo_until > now),
        "labels": story.label_names,
        "edit": {**current, **(draft or {})},
        "schedule_value": (draft or {}).get("at") or views.default_schedule_value(now, tz),
        "preview": preview,
        "history": [
            {
                "number": r.number,
                "action": r.action,
                "actor": r.actor,
                "note": r.note,
                "when": views.full_time(r.created_at, tz),
            }
            for r in history
        ],
        "diff": diff,
        "raw": views.raw_post(session, story.id),
        "deliveries": [
            {
                "id": d.id,
                "partner": name,
                "event": d.event,
                "version": d.story_revision,
                "status": d.status,
                "attempts": d.attempts,
                "next": views.full_time(d.next_attempt_at, tz) if d.status == "pending" else "",
                "sent": views.full_time(d.sent_at, tz),
                "error": d.last_error or "",
            }
            for d, name in views.deliveries(session, story_id=story.id)
        ],
        "conflict": conflict,
        "stream": f"/desk/stream?story={story.id}&after={max((r.id for r in history), default=0)}",
    }


@router.get("/stories/{story_id}")
def story_page(
    request: Request,
    story_id: int,
    diff_from: Annotated[int | None, Query(alias="from")] = None,
    diff_to: Annotated[int | None, Query(alias="to")] = None,
) -> Response:
    """A story: preview, actions, versions with a diff, the raw post, deliveries."""
    desk = _signed_in(request)
    with session_scope(read_only=True) as session:
        try:
            context = _story_context(session, story_id, desk, diff_from=diff_from, diff_to=diff_to)
        except NewsroomError as error:
            raise HTTPException(error.status, error.detail) from error
        return _page("story.html", **context)


@contextmanager
def _writing(story_id: int) -> Iterator[Session]:
    try:
        with session_scope() as session:
            yield session
    except StaleDataError as error:
        raise Conflict(f"story {story_id} changed meanwhile") from error


def _conflict_page(
    desk: DeskSession, story_id: int, loaded: int, draft: dict[str, Any], action: str
) -> Response:
    """The story as it is now, what changed since the editor loaded it, and their own change kept."""
    with session_scope(read_only=True) as session:
        story = publish.get_story(session, story_id)
        later = [r for r in views.revisions(session, story_id) if r.number > loaded]
        before = _snapshot(session, story_id, loaded) or {}
        after = _snapshot(session, story_id, story.revision) or {}
        conflict = {
            "action": action,
            "loaded": loaded,
            "current": story.revision,
            "changes": [
                {"number": r.number, "action": r.action, "actor": r.actor, "note": r.note} for r in later
            ],
            "fields": [field for field in views.diff_snapshots(before, after) if field.changed],
            "mine": draft,
        }
        context = _story_context(session, story_id, desk, conflict=conflict, draft=draft)
        return _page("story.html", 409, **context)


def _labels(exclusive: str | None, breaking: str | None) -> list[str]:
    return [name for name, on in (("exclusive", exclusive), ("breaking", breaking)) if on]


@router.post("/stories/{story_id}/publish")
def publish_action(
    request: Request,
    story_id: int,
    csrf: Annotated[str, Form()] = "",
    expected_version: Annotated[int | None, Form()] = None,
    exclusive: Annotated[str | None, Form()] = None,
    breaking: Annotated[str | None, Form()] = None,
    silent: Annotated[str | None, Form()] = None,
    note: Annotated[str, Form(max_length=2000)] = "",
    at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Publish now, or at a local time in the newsroom's timezone (the schedule form)."""
    desk = _posting(request, csrf)
    here = f"/desk/stories/{story_id}"
    when = None
    if at:
        try:
            when = views.parse_local(at, get_settings().tz)
        except views.LocalTimeError as error:
            sessions.flash(desk, f"Not scheduled: {error}", kind="error")
            return _redirect(here)
        if when <= utcnow():
            sessions.flash(desk, "Not scheduled: that time has passed.", kind="error")
            return _redirect(here)
    draft = {"at": at, "note": note}
    try:
        with _writing(story_id) as session:
            outcome = publish.publish_story(
                session,
                story_id=story_id,
                actor=desk.actor,
                labels=_labels(exclusive, breaking),
                at=when,
                expected_version=expected_version,
                silent=bool(silent),
                note=note or None,
            )
            story = outcome.story
            if outcome.event is None:
                message = f"Scheduled for {views.full_time(story.publish_at, get_settings().tz)}."
            else:
                message = {"story.published": "Published.", "story.updated": "Published the update."}.get(
                    outcome.event, "Published."
                )
    except SkipEvent:
        message = "Nothing to publish: the story is published and unchanged."
    except Conflict:
        return _conflict_page(desk, story_id, expected_version or 0, draft, "publish")
    except NewsroomError as error:
        sessions.flash(desk, f"Not published: {error.detail}", kind="error")
        return _redirect(here)
    sessions.flash(desk, message)
    return _redirect(here)


def _differs(story: Story, name: str, value: Any) -> bool:
    current = views.effective(story, name)
    if name == "tags":
        return bool(value != list(current))
    if name == "section":
        return (slugify(value) if value else None) != (current or None)
    return bool(value != (current or None))


@router.post("/stories/{story_id}/edit")
def edit_action(
    request: Request,
    story_id: int,
    csrf: Annotated[str, Form()] = "",
    expected_version: Annotated[int | None, Form()] = None,
    headline: Annotated[str, Form(max_length=1000)] = "",
    lede: Annotated[str, Form(max_length=5000)] = "",
    section: Annotated[str, Form(max_length=100)] = "",
    tags: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Change the headline, lede, section and tags: a new revision (shown to readers at the next publish)."""
    desk = _posting(request, csrf)
    here = f"/desk/stories/{story_id}"
    draft = {"headline": headline, "lede": lede, "section": section, "tags": tags}
    wanted = {
        "headline": headline.strip(),
        "lede": lede.strip() or None,
        "section": section.strip() or None,
        "tags": [tag.strip() for tag in tags.split(",") if tag.strip()],
    }
    try:
        with _writing(story_id) as session:
            story = publish.get_story(session, story_id)
            changes = {name: value for name, value in wanted.items() if _differs(story, name, value)}
            if not changes:
                if expected_version is not None and expected_version != story.revision:
                    raise Conflict("changed meanwhile")
                sessions.flash(desk, "Nothing changed.")
                return _redirect(here)
            story = publish.edit_story(
                session,
                story_id=story_id,
                changes=changes,
                expected_version=expected_version,
                actor=desk.actor,
            )
            shown_later = story.status in ("published", "scheduled")
    except Conflict:
        return _conflict_page(desk, story_id, expected_version or 0, draft, "edit")
    except NewsroomError as error:
        sessions.flash(desk, f"Not saved: {error.detail}", kind="error")
        return _redirect(here)
    sessions.flash(
        desk,
        f"Saved ({', '.join(sorted(changes))})."
        + (" Readers see it after the next publish." if shown_later else ""),
    )
    return _redirect(here)


@router.post("/stories/{story_id}/unpublish")
def unpublish_action(
    request: Request,
    story_id: int,
    csrf: Annotated[str, Form()] = "",
    expected_version: Annotated[int | None, Form()] = None,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Take the story down everywhere (or cancel its schedule), with a reason."""
    desk = _posting(request, csrf)
    here = f"/desk/stories/{story_id}"
    try:
        with _writing(story_id) as session:
            outcome = publish.unpublish_story(
                session, story_id=story_id, reason=reason, actor=desk.actor, expected_version=expected_version
            )
            status = outcome.story.status
    except Conflict:
        return _conflict_page(desk, story_id, expected_version or 0, {"reason": reason}, "unpublish")
    except NewsroomError as error:
        sessions.flash(desk, f"Not unpublished: {error.detail}", kind="error")
        return _redirect(here)
    sessions.flash(
        desk,
        {
            "unpublished": "Unpublished: the story left every page, feed and partner.",
            "ingested": "Schedule cancelled.",
        }.get(status, "Nothing to unpublish."),
    )
    return _redirect(here)


@router.post("/deliveries/{delivery_id}/replay")
def replay_action(
    request: Request,
    delivery_id: str,
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/desk",
) -> Response:
    """Send a delivery again, with the same webhook-id (admins)."""
    desk = _posting(request, csrf)
    _admin(desk)
    try:
        with session_scope() as session:
            replayed = replay(session, delivery_id=delivery_id)
    except NewsroomError as error:
        sessions.flash(desk, f"Not replayed: {error.detail}", kind="error")
    else:
        sessions.flash(
            desk, f"Delivery {delivery_id} sent again." if replayed else "It is being sent already."
        )
    return _redirect(_safe_next(next))


# --- admin -----------------------------------------------------------------------------------


@router.get("/admin")
def admin_page(request: Request) -> Response:
    """Sources (failing first), partners with their dead deliveries, tokens."""
    desk = _signed_in(request)
    _admin(desk)
    tz = get_settings().tz
    with session_scope(read_only=True) as session:
        sources = sorted(
            (source_view(s) for s in list_sources(session)),
            key=lambda view: (not view["failing"], view["name"]),
        )
        counted = session.execute(
            select(Delivery.partner_id, func.count())
            .where(Delivery.status == "dead")
            .group_by(Delivery.partner_id)
        )
        dead_counts: dict[int, int] = {partner_id: count for partner_id, count in counted}
        partners = [
            {
                "name": p.name,
                "url": p.url,
                "enabled": p.enabled,
                "disabled_reason": p.disabled_reason,
                "dead": dead_counts.get(p.id, 0),
            }
            for p in session.scalars(select(Partner).order_by(Partner.name))
        ]
        dead = [
            {
                "id": d.id,
                "partner": name,
                "story_id": d.story_id,
                "event": d.event,
                "version": d.story_revision,
                "attempts": d.attempts,
                "error": d.last_error or "",
                "when": views.full_time(d.created_at, tz),
            }
            for d, name in views.deliveries(session, status="dead", limit=100)
        ]
        tokens = [
            {"name": t.name, "role": t.role, "created": views.full_time(t.created_at, tz)}
            for t in session.scalars(select(Token).order_by(Token.role, Token.name))
        ]
    return _page(
        "admin.html",
        desk=desk,
        flashes=sessions.take_flashes(desk),
        sources=sources,
        partners=partners,
        dead=dead,
        tokens=tokens,
    )


@router.post("/admin/tokens")
def create_token_action(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "editor",
    name: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Create an editor or admin token; it is shown once, on the next page."""
    desk = _posting(request, csrf)
    _admin(desk)
    if role not in sessions.DESK_ROLES or not name.strip():
        sessions.flash(desk, "Not created: give a name and the role editor or admin.", kind="error")
        return _redirect("/desk/admin")
    with session_scope() as session:
        token = create_token(session, role=role, name=name.strip())
    log.info("desk: %s created a %s token %r", desk.actor, role, name.strip())
    sessions.flash(desk, f"{role.title()} token for {name.strip()} (shown once): {token}", kind="secret")
    return _redirect("/desk/admin")
