"""The one FastAPI app: ingest, publish and syndicate endpoints, pages, health and metrics."""

from __future__ import annotations

import hashlib
import hmac
import logging
from base64 import b64encode
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from lxml import html as lxml_html  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.desk.routes import router as desk_router
from services.ingest.api import router as ingest_router
from services.publish.api import router as publish_router
from services.syndicate.api import FeedFastPath
from services.syndicate.api import router as syndicate_router
from shared.config import get_settings
from shared.db import get_engine
from shared.errors import Forbidden, NewsroomError
from shared.guards import Guard, SecurityHeaders
from shared.metrics import NewsroomCollector
from shared.redis import get_redis
from shared.web import handle_newsroom_error, resolve_principal

log = logging.getLogger(__name__)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    reasons = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in error.errors()
    )
    return JSONResponse({"error": "unprocessable", "detail": reasons}, status_code=422)


async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    # The database is the source of truth: nothing is half-kept, the client sends again.
    log.warning("database unavailable: %s", str(error).splitlines()[0][:200])
    return JSONResponse(
        {"error": "unavailable", "detail": "the database is unavailable; try again"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


_ERROR_CODES = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no route, a body it cannot decode) in the project's error shape."""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code < 400:
        return Response(status_code=error.status_code, headers=error.headers)
    code = _ERROR_CODES.get(error.status_code, "error")
    return JSONResponse(
        {"error": code, "detail": str(error.detail)}, status_code=error.status_code, headers=error.headers
    )


class NewsroomApp(FastAPI):
    """FastAPI whose every response, the 500 page included, carries the security headers."""

    def build_middleware_stack(self) -> Any:
        return SecurityHeaders(super().build_middleware_stack())


def metrics_access(authorization: Annotated[str | None, Header()] = None) -> None:
    """/metrics: the bearer token in NEWSROOM_METRICS_TOKEN, or an admin token (401 / 403 otherwise)."""
    expected = get_settings().metrics_token
    presented = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else ""
    if expected and presented and hmac.compare_digest(presented.encode(), expected.encode()):
        return
    if resolve_principal(authorization).role != "admin":
        raise Forbidden("/metrics needs an admin token or NEWSROOM_METRICS_TOKEN")


def swagger_page(openapi_url: str) -> HTMLResponse:
    """The Swagger UI page, with a CSP that admits its scripts (the inline one by its hash) and no more."""
    page = get_swagger_ui_html(openapi_url=openapi_url, title="Newsroom API")
    document = lxml_html.fromstring(bytes(page.body))
    hashes = " ".join(
        f"'sha256-{b64encode(hashlib.sha256((script.text or '').encode()).digest()).decode()}'"
        for script in document.iter("script")
        if not script.get("src")
    )
    csp = (
        f"default-src 'none'; script-src https://cdn.jsdelivr.net {hashes}; "
        "style-src https://cdn.jsdelivr.net 'unsafe-inline'; img-src 'self' data: https:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return HTMLResponse(bytes(page.body), headers={"Content-Security-Policy": csp})


def create_app() -> FastAPI:
    """Build the application (no connections are opened until the first request)."""
    docs = get_settings().api_docs
    app = NewsroomApp(
        title="Newsroom",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # No OpenTelemetry here (metrics are Prometheus'): without this FastAPI asks on every
        # request whether a tracer, meter or logger provider has been set up.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_exception_handler(NewsroomError, handle_newsroom_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(ingest_router)
    app.include_router(publish_router)
    app.include_router(syndicate_router)
    app.include_router(desk_router)
    # Stored feeds and pages held in memory are answered before routing (the hottest paths),
    # after the guard's rate limit, size and authentication checks.
    app.add_middleware(FeedFastPath)
    app.add_middleware(Guard)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NewsroomCollector())

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await run_in_threadpool(_dependency_checks)
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503
        )

    if docs:

        @app.get("/docs", include_in_schema=False)
        async def swagger() -> HTMLResponse:
            return swagger_page("/openapi.json")

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
    async def metrics() -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def _dependency_checks() -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        with get_engine(read_only=True).connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"failed: {type(error).__name__}: {error}"[:300]
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as error:
        checks["redis"] = f"failed: {type(error).__name__}: {error}"[:300]
    return checks


app = create_app()
