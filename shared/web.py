"""What every HTTP endpoint shares: who is asking, and how errors look."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from shared.auth import find_token
from shared.db import session_scope
from shared.errors import Forbidden, NewsroomError, Unauthorized


@dataclass(frozen=True)
class Principal:
    """The holder of a valid bearer token."""

    token_id: int
    name: str
    role: str
    source_id: int | None

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


# Where the guard (shared.guards) leaves the caller it authenticated before the body was read.
PRINCIPAL_STATE = "newsroom_principal"


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 when missing or wrong."""
    known = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if isinstance(known, Principal):
        return known
    return resolve_principal(authorization)


def resolve_principal(authorization: str | None) -> Principal:
    """The holder of the bearer token in an ``Authorization`` header value; 401 when missing or wrong."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("a bearer token is required")
    token = authorization[7:].strip()
    with session_scope(read_only=True) as session:
        row = find_token(session, token)
        if row is None:
            raise Unauthorized("unknown token")
        return Principal(token_id=row.id, name=row.name, role=row.role, source_id=row.source_id)


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


def error_response(error: NewsroomError, **extra: object) -> JSONResponse:
    """The JSON body of every refusal: ``{"error": CODE, "detail": REASON}``."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse({"error": error.code, "detail": error.detail, **extra},
                        status_code=error.status, headers=headers)  # fmt: skip


async def handle_newsroom_error(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI exception handler for the project's error tree."""
    assert isinstance(error, NewsroomError)
    return error_response(error)
