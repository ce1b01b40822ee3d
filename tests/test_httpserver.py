"""The server's protocol (shared.httpserver) on a real uvicorn on loopback, read by raw sockets.

A response goes out in one write: over a keep-alive connection the client receives one TCP
segment per small response where uvicorn's own protocol sends two (the segments are the
client socket's own count, TCP_INFO). Streamed responses still arrive as they are written,
large ones whole, and ``Connection: close`` closes after the response.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from shared.httpserver import HTTP_PROTOCOL
from tests.helpers.support import free_port

SMALL = b"<p>" + b"x" * 2000 + b"</p>"
LARGE = bytes(range(256)) * (5 * 1024 * 1024 // 256)
STREAM_PAUSE = 0.5
streamed_second = threading.Event()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await asyncio.sleep(STREAM_PAUSE)
        streamed_second.set()
        await send({"type": "http.response.body", "body": b"second\n"})
        return
    body = LARGE if path == "/large" else SMALL
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(http: str) -> Iterator[int]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length: its head and its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before the headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "the connection closed inside the body"
        body += chunk
    return head, body


def request(path: str, *, close: bool = False) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: test\r\nConnection: " + connection + b"\r\n\r\n"


# struct tcp_info (linux/tcp.h): tcpi_segs_in is the u32 at byte 140.
SEGS_IN_OFFSET = 140


def segments_received(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, SEGS_IN_OFFSET)[0])


def segments_per_response(port: int, *, requests: int = 40) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(10):  # past the connection's first exchanges (quick ACKs)
            sock.sendall(request("/small"))
            read_response(sock)
        before = segments_received(sock)
        for _ in range(requests):
            sock.sendall(request("/small"))
            _head, body = read_response(sock)
            assert body == SMALL
        return (segments_received(sock) - before) / requests


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's segment count is Linux's")
def test_a_small_response_arrives_in_one_segment_where_uvicorn_sends_two() -> None:
    with serving(HTTP_PROTOCOL) as port:
        coalesced = segments_per_response(port)
    with serving("httptools") as port:
        plain = segments_per_response(port)
    assert plain >= 1.9, f"uvicorn's own protocol: {plain} segments per response"
    assert coalesced <= 1.2, f"{coalesced} segments per response"


def test_a_streamed_response_arrives_as_it_is_written() -> None:
    streamed_second.clear()
    with serving(HTTP_PROTOCOL) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request("/stream"))
        data = b""
        while b"first\n" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert b" 200 " in data.split(b"\r\n", 1)[0]
        assert not streamed_second.is_set(), "the first chunk waited for the rest of the response"
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert b"second\n" in data


def test_a_large_body_arrives_whole_and_close_closes_after_the_response() -> None:
    with serving(HTTP_PROTOCOL) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request("/large"))
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == LARGE
        sock.sendall(request("/small", close=True))
        head, body = read_response(sock)
        assert b"connection: close" in head.lower() and body == SMALL
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the server closed the connection
