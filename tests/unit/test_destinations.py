"""`destinations.get_checked` against a real server on loopback: every hop of a redirect is checked
before it is requested, and the hops are counted."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from smsbridge.destinations import (
    DestinationRefused,
    NotHttp,
    TooManyRedirects,
    get_checked,
    guarded_session,
    is_allowed,
    networks,
    refusal,
)
from tests.support.http_server import serving

ALLOWED = networks(["127.0.0.1/32"])  # the server's address; 127.0.0.2 is loopback too, but not allowed
Served = tuple[str, list[str], aiohttp.ClientSession]


@asynccontextmanager
async def server(answer: Callable[[web.Request, int], web.Response], allowed: list[str]) -> AsyncIterator[Served]:
    """`answer(request, hop)` served at /r on 127.0.0.1; yields its URL, the paths asked for, and a
    session guarded to `allowed`."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return answer(request, len(hits) - 1)

    async with serving("GET", "/r", handler) as url, guarded_session(allowed) as http:
        yield f"{url}/r", hits, http


def redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


async def test_redirects_within_the_allowed_host_are_followed() -> None:
    def answer(_: web.Request, hop: int) -> web.Response:
        return redirect(f"/r?hop={hop + 1}", 307) if hop < 2 else web.Response(text=f"after {hop} hops")

    async with server(answer, ["127.0.0.1/32"]) as (url, hits, http):
        async with await get_checked(http, url, ALLOWED, max_redirects=2) as response:
            assert response.status == 200 and await response.text() == "after 2 hops"
    assert hits == ["/r", "/r?hop=1", "/r?hop=2"]


async def test_a_redirect_to_a_refused_address_is_refused_on_that_hop() -> None:
    async with server(lambda request, _: redirect(f"http://127.0.0.2:{request.url.port}/r"),
                      ["127.0.0.1/32"]) as (url, hits, http):
        with pytest.raises(DestinationRefused, match="127.0.0.2"):
            await get_checked(http, url, ALLOWED, max_redirects=3)
    assert hits == ["/r"]  # the first hop was made; the second was refused before any connection


async def test_more_hops_than_allowed_are_refused() -> None:
    async with server(lambda _, hop: redirect(f"/r?hop={hop + 1}", 301), ["127.0.0.1/32"]) as (url, hits, http):
        with pytest.raises(TooManyRedirects, match="more than 2 redirects"):
            await get_checked(http, url, ALLOWED, max_redirects=2)
    assert hits == ["/r", "/r?hop=1", "/r?hop=2"]  # the first request and two redirects followed


async def test_a_redirect_to_a_url_that_is_not_http_is_refused() -> None:
    async with server(lambda _, __: redirect("file:///etc/passwd"), ["127.0.0.1/32"]) as (url, hits, http):
        with pytest.raises(NotHttp, match="redirected to a URL that is not http"):
            await get_checked(http, url, ALLOWED, max_redirects=3)
        with pytest.raises(NotHttp, match="not an http"):
            await get_checked(http, "ftp://127.0.0.1/x", ALLOWED, max_redirects=3)
    assert hits == ["/r"]


async def test_a_name_that_resolves_only_to_refused_addresses_is_refused_as_it_resolves() -> None:
    async with server(lambda _, __: web.Response(text="never"), []) as (url, hits, http):
        with pytest.raises(aiohttp.ClientConnectorError) as raised:
            await get_checked(http, url.replace("127.0.0.1", "localhost"), (), max_redirects=3)
    assert isinstance(refusal(raised.value), DestinationRefused) and hits == []


async def test_a_refused_address_literal_is_refused_before_any_connection() -> None:
    async with guarded_session([]) as http:
        with pytest.raises(DestinationRefused, match="169.254.169.254"):
            await get_checked(http, "http://169.254.169.254/latest/meta-data", (), max_redirects=3)


def test_refusal_finds_the_refusal_behind_a_failed_connection() -> None:
    refused = DestinationRefused("localhost resolves to no allowed address")
    assert refusal(refused) is refused
    assert refusal(aiohttp.ClientConnectionError("reset")) is None
    assert refusal(TimeoutError()) is None


async def test_a_redirect_to_a_location_that_cannot_be_parsed_is_not_http_not_a_crash() -> None:
    async with server(lambda request, hop: redirect("http://[::1"), ["127.0.0.1/32"]) as (url, hits, http):
        with pytest.raises(NotHttp, match="cannot be parsed"):
            await get_checked(http, url, ALLOWED, max_redirects=3)
    assert hits == ["/r"]


@pytest.mark.parametrize("address", [
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix: 169.254.169.254 behind a translator
    "64:ff9b:1::a00:1",  # NAT64 local-use prefix: 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo: never global
])
def test_an_ipv6_address_standing_for_a_refused_ipv4_one_is_refused(address: str) -> None:
    assert not is_allowed(ipaddress.ip_address(address), ())


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::", "2001:4860:4860::8888"])
def test_an_ipv6_address_standing_for_a_public_ipv4_one_or_none_is_allowed(address: str) -> None:
    assert is_allowed(ipaddress.ip_address(address), ())


def test_an_allowed_ipv4_network_allows_its_addresses_in_ipv6_form() -> None:
    assert is_allowed(ipaddress.ip_address("64:ff9b::a00:1"), networks(["10.0.0.0/8"]))
