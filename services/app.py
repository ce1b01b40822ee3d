"""The one FastAPI app: ingest, publish and syndicate endpoints, pages, health and metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text

from services.ingest.api import router as ingest_router
from services.publish.api import router as publish_router
from services.syndicate.api import FeedFastPath
from services.syndicate.api import router as syndicate_router
from shared.db import get_engine
from shared.errors import NewsroomError
from shared.metrics import NewsroomCollector
from shared.redis import get_redis
from shared.web import handle_newsroom_error

log = logging.getLogger(__name__)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    reasons = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in error.errors()
    )
    return JSONResponse({"error": "unprocessable", "detail": reasons}, status_code=422)


def create_app() -> FastAPI:
    """Build the application (no connections are opened until the first request)."""
    app = FastAPI(title="Newsroom", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.add_exception_handler(NewsroomError, handle_newsroom_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(ingest_router)
    app.include_router(publish_router)
    app.include_router(syndicate_router)
    # Stored feeds and pages held in memory are answered before routing (the hottest paths).
    app.add_middleware(FeedFastPath)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NewsroomCollector())

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await run_in_threadpool(_dependency_checks)
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks},
                            status_code=200 if ok else 503)  # fmt: skip

    @app.get("/metrics", include_in_schema=False)
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
