"""Where the bridge may connect to on someone else's say-so: not its own host or network (SSRF).

Outbound media are URLs a tenant names, inbound ones come in a webhook, and a relayed send names
its own `dlr_callback`: any of them could point the bridge at 127.0.0.1, the cloud's metadata
address (169.254.169.254) or a private service. Only globally routable addresses are used, plus
the networks the configuration allows for that use (`[media] fetch_allowed_networks`,
`[[relay_clients]] dlr_callback_networks`; tests and the sandbox serve on loopback). The check is
made on the address the connection is actually made to: names are checked as they resolve (no
window for a DNS answer that changes between a check and the connection), address literals before
each request (aiohttp does not resolve them), and redirects are followed one hop at a time, so
that each hop is checked again, or not at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class DestinationRefused(OSError):
    """The URL's host is, or resolves only to, an address the bridge does not connect to for this use."""


class NotHttp(ValueError):
    """A URL, or a redirect's target, that is not http(s): never requested."""


class TooManyRedirects(Exception):
    """More redirects than the caller follows."""


def networks(allowed: Iterable[str]) -> tuple[Network, ...]:
    """The allow-list as networks (checked with the configuration, so every entry parses)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in allowed)


def network_problems(entries: Iterable[str], where: str) -> list[tuple[str, str]]:
    """(where[i], what) for each allow-list entry that is not an address or a network."""
    problems = []
    for i, entry in enumerate(entries):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append((f"{where}[{i}]", "not a network: write an address or CIDR such as 10.0.0.0/8"))
    return problems


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at (through a
# translator or a tunnel): NAT64's well-known and local-use prefixes, and the deprecated
# IPv4-compatible form (::a.b.c.d). 6to4 (2002::/16) carries its address in bits 16-48.
_V4_IN_LAST_32 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that embed one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _V4_IN_LAST_32):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_allowed(address: Address, allowed: tuple[Network, ...]) -> bool:
    """Globally routable, or inside a network the configuration allows. An IPv6 address that
    embeds an IPv4 one (mapped, NAT64, 6to4, IPv4-compatible) is judged by that one (Teredo,
    2001::/32, is never global)."""
    if any(address.version == net.version and address in net for net in allowed):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_allowed(inner, allowed)
    return address.is_global and not address.is_multicast


def check_literal(host: str | None, allowed: tuple[Network, ...]) -> None:
    """Raise `DestinationRefused` when `host` is an address literal that is not allowed
    (a name is checked by `GuardedResolver` as it resolves)."""
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return
    if not is_allowed(address, allowed):
        raise DestinationRefused(f"{address} is not an allowed address (private, loopback or reserved)")


def check_url(url: str, allowed: tuple[Network, ...]) -> None:
    """`check_literal` on the URL's host."""
    check_literal(yarl.URL(url).host, allowed)


def refusal(exc: BaseException) -> DestinationRefused | None:
    """The refusal behind a failed request: `exc` itself, or the one `GuardedResolver` raised
    inside a connection error (a name that resolves only to refused addresses); None otherwise."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    return exc if isinstance(exc, DestinationRefused) else None


async def get_checked(session: aiohttp.ClientSession, url: str, allowed: tuple[Network, ...],
                      max_redirects: int) -> aiohttp.ClientResponse:
    """GET `url` through a `guarded_session`, following redirects one hop at a time so that each
    hop's URL is checked before it is requested: http(s) (`NotHttp`), and its host, if an address
    literal, allowed (`DestinationRefused`; a name is checked by the session's resolver as it
    resolves). More than `max_redirects` raise `TooManyRedirects`. The caller releases the answer
    (`async with`) and sets the deadline (it covers reading the body too)."""
    for hop in range(max_redirects + 1):
        if not url.startswith(("http://", "https://")):
            raise NotHttp("redirected to a URL that is not http(s)" if hop else "not an http(s) URL")
        try:
            check_url(url, allowed)
        except ValueError as exc:  # yarl's answer to e.g. "http://[::1"
            raise NotHttp("redirected to a URL that cannot be parsed" if hop else "a URL that cannot be parsed") \
                from exc
        response = await session.get(url, allow_redirects=False)
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUSES or not location:
            return response
        response.release()
        try:
            url = str(response.url.join(yarl.URL(location)))
        except ValueError as exc:
            raise NotHttp("redirected to a URL that cannot be parsed") from exc
    raise TooManyRedirects(f"more than {max_redirects} redirects")


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, keeping only the addresses the bridge may connect to."""

    def __init__(self, allowed: tuple[Network, ...]) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[
            ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        usable = [r for r in found if is_allowed(ipaddress.ip_address(r["host"]), self._allowed)]
        if not usable:
            raise DestinationRefused(f"{host} resolves to no allowed address (only private, loopback or reserved)")
        return usable

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(allowed: Iterable[str], **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections go only to allowed addresses."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(networks(allowed)))
    return aiohttp.ClientSession(connector=connector, **kwargs)
