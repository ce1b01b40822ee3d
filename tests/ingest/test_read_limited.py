"""The wire endpoint reads at most a little past NEWSROOM_MAX_BODY_BYTES, however much is sent."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from services.ingest.api import OVERSIZE_HEAD_BYTES, _read_limited

CHUNK = 64 * 1024


class EndlessBody:
    """An ASGI receive channel that never runs out of body, counting what was taken from it."""

    def __init__(self, limit_chunks: int | None = None) -> None:
        self.pulled = 0
        self.limit_chunks = limit_chunks

    async def __call__(self) -> dict[str, Any]:
        self.pulled += CHUNK
        more = self.limit_chunks is None or self.pulled < self.limit_chunks * CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": more}


def read(receive: EndlessBody, limit: int, content_length: int | None = None) -> tuple[bytes, int | None]:
    headers = [(b"content-length", str(content_length).encode())] if content_length is not None else []
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)
    return asyncio.run(_read_limited(request, limit))


def test_a_declared_oversize_reads_only_the_head() -> None:
    receive = EndlessBody()
    head, size = read(receive, 1_000_000, content_length=10**12)
    assert size == 10**12
    assert len(head) == OVERSIZE_HEAD_BYTES
    assert receive.pulled == OVERSIZE_HEAD_BYTES


def test_an_undeclared_oversize_stops_one_chunk_past_the_limit() -> None:
    receive = EndlessBody()
    limit = 5 * CHUNK + 10
    head, size = read(receive, limit)
    # A chunked body that never ends: reading stops at the first chunk past the limit.
    assert size == receive.pulled == 6 * CHUNK
    assert len(head) == OVERSIZE_HEAD_BYTES


def test_a_body_within_the_limit_is_read_whole() -> None:
    receive = EndlessBody(limit_chunks=3)
    body, size = read(receive, 3 * CHUNK, content_length=3 * CHUNK)
    assert size is None
    assert body == b"x" * (3 * CHUNK)
