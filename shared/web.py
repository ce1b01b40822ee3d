"""What every HTTP endpoint shares: who is asking, and how errors look."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from shared.auth import auth_generation, find_holder, hash_token, note_use
from shared.db import session_scope
from shared.errors import Forbidden, NewsroomError, Unauthorized
from shared.models import Source, utcnow


@dataclass(frozen=True)
class Principal:
    """The holder of a valid bearer token."""

    token_id: int
    name: str
    role: str
    source_id: int | None
    # A wire token's source as it was read with the token (enabled, not removed), so that a
    # post needs no second read of it.
    source: Source | None = field(default=None, compare=False, repr=False)

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


# Declares the scheme in the OpenAPI document; a missing or malformed header is our own 401.
_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `newsroom source add` (wire) or `newsroom token create` (editor, admin).",
)
# Where the guard (shared.guards) leaves the caller it authenticated before the body was read.
PRINCIPAL_STATE = "newsroom_principal"


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 when missing or wrong."""
    known = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if isinstance(known, Principal):
        return known
    if credentials is None:
        raise Unauthorized("a bearer token is required")
    return _holder(credentials.credentials)


def resolve_principal(authorization: str | None) -> Principal:
    """The holder of the bearer token in an ``Authorization`` header value; 401 when missing or wrong."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("a bearer token is required")
    return _holder(authorization[7:])


# What a token's lookup found, by the token's hash, while the counter of token and source
# changes stays where it was (``shared.auth``), and for HOLDERS_TTL seconds at most: a
# wire post then costs no read of its token.
HOLDERS_TTL = 30.0
HOLDERS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class _Held:
    principal: Principal
    generation: int
    at: float
    expires_at: datetime | None


_held: dict[str, _Held] = {}


def _holder(token: str) -> Principal:
    token = token.strip()
    digest = hash_token(token)
    generation = auth_generation()  # read first: a change committed after it moves it on
    held = _held.get(digest)
    if (
        held is not None
        and held.generation == generation
        and time.monotonic() - held.at < HOLDERS_TTL
        and (held.expires_at is None or held.expires_at > utcnow())
    ):
        note_use(held.principal.token_id, digest, utcnow())
        return held.principal
    with session_scope(read_only=True) as session:
        found = find_holder(session, token)
        if found is None:
            _held.pop(digest, None)
            raise Unauthorized("unknown token")
        row, source = found
        principal = Principal(
            token_id=row.id, name=row.name, role=row.role, source_id=row.source_id, source=source
        )
    if generation is not None:
        if len(_held) >= HOLDERS_MAX:
            _held.clear()
        _held[digest] = _Held(principal, generation, time.monotonic(), row.expires_at)
    return principal


PrincipalDep = Annotated[Principal, Depends(principal)]


def role_dependency(*roles: str) -> Any:
    """A dependency admitting only these roles (403 for any other valid token)."""

    def check(caller: PrincipalDep) -> Principal:
        if caller.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}")
        return caller

    return Depends(check)


EditorDep = Annotated[Principal, role_dependency("editor", "admin")]
AdminDep = Annotated[Principal, role_dependency("admin")]

# Row ids (and story versions) are INTEGER columns, 32-bit on PostgreSQL: a larger number in a
# path, query or body is 422, never a database error.
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


class ErrorBody(BaseModel):
    """Every refusal: ``{"error": CODE, "detail": REASON}``; a refused wire post adds its receipt."""

    error: str
    detail: str
    receipt: int | None = None


_REASONS = {
    400: "Malformed: the parser's reason and position",
    401: "No token, or an unknown one",
    403: "A token of the wrong role or source",
    404: "Not found",
    409: "Conflict: the story changed meanwhile (`expected_version`)",
    413: "The body is larger than `NEWSROOM_MAX_BODY_BYTES`",
    415: "Unknown Content-Type",
    422: "Well-formed but not acceptable: the reason names the field",
    429: "Too many requests: see `Retry-After`",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these refusals, each with the error body."""
    return {status: {"model": ErrorBody, "description": _REASONS[status]} for status in statuses}


def error_response(error: NewsroomError, **extra: object) -> JSONResponse:
    """The JSON body of every refusal: ``{"error": CODE, "detail": REASON}``."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(
        {"error": error.code, "detail": error.detail, **extra}, status_code=error.status, headers=headers
    )


async def handle_newsroom_error(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI exception handler for the project's error tree."""
    assert isinstance(error, NewsroomError)
    return error_response(error)
