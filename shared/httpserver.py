"""The HTTP server's protocol: uvicorn's (httptools), with each response sent in one write.

uvicorn writes a response's status line and headers, then its body, each with a
``transport.write`` of its own; on uvloop each is a ``send()`` at once. A stored page or feed
thus cost two system calls and two TCP segments, and woke the client twice. Here the writes
made in one turn of the event loop are held and handed to the socket together at the start of
the next turn (``writelines``: one ``writev``). A streamed response still goes out as it is
written, a turn later.

``python -m bench feeds`` serves the same stored feed with and without it (bench/README.md).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What `uvicorn.Config(http=...)` and `uvicorn.run(http=...)` take to serve with HttpProtocol.
HTTP_PROTOCOL = "shared.httpserver:HttpProtocol"


class CoalescingWrites:
    """A transport whose writes wait for the loop's next turn, then go to the socket together.

    Everything else (closing, flow control, the peer's address) is the wrapped transport's.
    Closing sends what is held first; what is held when the connection is already closing
    (the peer went away) is dropped, as a write to a closing transport would be.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a transport that coalesces a response's writes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = CoalescingWrites(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))
