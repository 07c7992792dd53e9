"""Where the bridge may download media from: not its own host or network (SSRF).

Outbound media are URLs a tenant names, and inbound ones come in a webhook: either could point
the bridge at 127.0.0.1, the cloud's metadata address (169.254.169.254) or a private service.
Only globally routable addresses are fetched, plus the networks `[media] fetch_allowed_networks`
lists (tests and the sandbox serve media on loopback). The check is made on the address the
connection is actually made to: names are checked as they resolve (no window for a DNS answer
that changes between a check and the connection), address literals before each request, and
redirects are followed one hop at a time so that each hop is checked again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(OSError):
    """The URL's host is, or resolves only to, an address the bridge does not fetch from."""


def networks(allowed: Iterable[str]) -> tuple[Network, ...]:
    """The allow-list as networks (checked with the configuration, so every entry parses)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in allowed)


def is_allowed(address: Address, allowed: tuple[Network, ...]) -> bool:
    """Globally routable, or inside a network the configuration allows."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address.version == net.version and address in net for net in allowed):
        return True
    return address.is_global and not address.is_multicast


def check_literal(host: str | None, allowed: tuple[Network, ...]) -> None:
    """Raise `DestinationRefused` when `host` is an address literal that is not allowed
    (a name is checked by `GuardedResolver` as it resolves)."""
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return
    if not is_allowed(address, allowed):
        raise DestinationRefused(f"{address} is not an address the bridge fetches media from")


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
            raise DestinationRefused(f"{host} resolves to no address the bridge fetches media from")
        return usable

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(allowed: Iterable[str], **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections go only to allowed addresses."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(networks(allowed)))
    return aiohttp.ClientSession(connector=connector, **kwargs)
