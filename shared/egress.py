"""Outbound HTTP goes only where it may: polls, partner pushes and hub pings.

Every host is resolved here and each address checked: loopback, private, link-local,
multicast, reserved, unspecified and every other non-global address is refused unless
``NEWSROOM_OUTBOUND_ALLOW`` covers it. The check runs when a URL is added and again at
every connection: the clients below carry an httpcore network backend that resolves,
checks, and connects to the very address it checked (TLS SNI and the Host header still
name the host, since httpcore passes them on from the URL). A redirect opens a new
connection, so it passes the same check.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

from shared.config import get_settings
from shared.errors import Unprocessable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5)


class OutboundRefused(httpcore.ConnectError):
    """A connection not made: the host resolves to no address we may reach.

    A ConnectError, so httpx reports it as ``httpx.ConnectError`` with this reason.
    """


def parse_allow(text: str) -> list[Network]:
    """The CIDRs of ``NEWSROOM_OUTBOUND_ALLOW`` (comma-separated); ValueError names a bad one."""
    networks: list[Network] = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as error:
                raise ValueError(f"NEWSROOM_OUTBOUND_ALLOW: {part.strip()!r}: {error}") from error
    return networks


def _plain(address: Address) -> Address:
    """An IPv4 address written as IPv6 (``::ffff:a.b.c.d``) is that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def non_public(address: Address) -> str | None:
    """Why an address is not public ("a loopback address" …), or None when it is."""
    address = _plain(address)
    kinds = (
        ("an unspecified", address.is_unspecified),
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a private", address.is_private),
        ("a reserved", address.is_reserved),
    )
    for kind, matches in kinds:
        if matches:
            return f"{kind} address"
    if isinstance(address, ipaddress.IPv6Address):
        # 6to4 and Teredo carry an IPv4 address inside; it must be public too.
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and (reason := non_public(embedded)) is not None:
            return f"an IPv6 address that embeds {reason}"
    if not address.is_global:
        return "not a public address"
    return None


def refusal(address: Address, allow: Iterable[Network]) -> str | None:
    """Why we may not connect to this address, or None when we may."""
    reason = non_public(address)
    if reason is None:
        return None
    plain = _plain(address)
    if any(plain.version == network.version and plain in network for network in allow):
        return None
    return f"{address} is {reason} (not in NEWSROOM_OUTBOUND_ALLOW)"


def resolve(host: str, port: int) -> list[Address]:
    """Every address the host resolves to, in the resolver's order (tests replace this)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if address not in found:
            found.append(address)
    return found


def permitted(host: str, port: int) -> list[Address]:
    """The addresses of ``host`` we may connect to; OutboundRefused when there are none."""
    host = host.strip("[]")
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError, ValueError) as error:
        raise OutboundRefused(f"outbound request refused: {host} does not resolve ({error})") from error
    allow = parse_allow(get_settings().outbound_allow)
    reasons = [refusal(address, allow) for address in addresses]
    allowed = [address for address, reason in zip(addresses, reasons, strict=True) if reason is None]
    if not allowed:
        why = "; ".join(reason for reason in reasons if reason) or "no address"
        raise OutboundRefused(f"outbound request refused: {host}: {why}")
    return allowed


def check_url(url: str, *, what: str = "url") -> None:
    """Refuse (422) a URL we could not fetch: not http(s), no host, or a host we may not reach."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise Unprocessable(f"{what}: not a URL: {error}") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Unprocessable(f"{what}: must be an absolute http(s) URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        permitted(parsed.host, port)
    except OutboundRefused as error:
        raise Unprocessable(f"{what}: {error}") from error


MASK = "***"


def redact_url(url: str) -> str:
    """A URL fit for a log line: no password and no query string (either may carry a secret)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<unparseable URL>"
    if parsed.password:
        parsed = parsed.copy_with(password=MASK)
    if parsed.query:
        parsed = parsed.copy_with(query=b"...")
    return str(parsed)


# --- the network backends ------------------------------------------------------------------


class GuardedBackend(httpcore.NetworkBackend):
    """Blocking connections, only to checked addresses."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in permitted(host, port):
            try:
                return self._backend.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        assert last is not None
        raise last

    def connect_unix_socket(self, *_: Any, **__: Any) -> httpcore.NetworkStream:
        raise OutboundRefused("outbound request refused: unix sockets are not for outbound requests")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """Asynchronous connections, only to checked addresses (resolved on a thread)."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  # httpcore's interface names it so
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in await anyio.to_thread.run_sync(permitted, host, port):
            try:
                return await self._backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        assert last is not None
        raise last

    async def connect_unix_socket(self, *_: Any, **__: Any) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("outbound request refused: unix sockets are not for outbound requests")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


# httpx builds its transport's httpcore pool itself and takes no network backend; these
# transports keep httpx's request and error mapping and swap in a pool that has one.


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a pool whose every connection is checked."""

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        # One SSL context (they are costly to build), for httpx's pool and the one replacing it.
        context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(),
        )


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's async transport over a pool whose every connection is checked."""

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        # One SSL context (they are costly to build), for httpx's pool and the one replacing it.
        context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncGuardedBackend(),
        )


def client(*, limits: httpx.Limits = DEFAULT_LIMITS, **options: Any) -> httpx.Client:
    """A blocking client that reaches only permitted addresses (no proxy from the environment)."""
    return httpx.Client(transport=GuardedTransport(limits=limits), trust_env=False, **options)


def async_client(*, limits: httpx.Limits = DEFAULT_LIMITS, **options: Any) -> httpx.AsyncClient:
    """An asynchronous client that reaches only permitted addresses."""
    return httpx.AsyncClient(transport=AsyncGuardedTransport(limits=limits), trust_env=False, **options)
