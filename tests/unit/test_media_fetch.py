"""Downloads from a fake Flowroute media server on loopback into the local store."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from smsbridge.config import MediaSettings
from smsbridge.destinations import guarded_session, is_allowed
from smsbridge.media.fetch import FetchFailed, FetchRefused, MediaFetcher
from smsbridge.media.store import LocalStore
from tests.support.media_server import FakeMediaServer, media_server

MB = 1024 * 1024


@pytest.fixture
async def server() -> AsyncIterator[FakeMediaServer]:
    async with media_server() as fake:
        yield fake


LOOPBACK = ["127.0.0.1/32"]  # the fake media server's address, and no other


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with guarded_session(LOOPBACK) as http:
        yield http


async def no_wait(_: float) -> None:
    return None


def fetcher(session: aiohttp.ClientSession, tmp_path: Path, **settings: object) -> MediaFetcher:
    media = MediaSettings(**{"fetch_attempts": 3, "fetch_timeout_s": 5.0,  # type: ignore[arg-type]
                             "fetch_allowed_networks": LOOPBACK, **settings})
    return MediaFetcher(session, LocalStore(tmp_path), media, sleep=no_wait)


async def test_a_picture_is_downloaded_into_the_store(server: FakeMediaServer, session: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    url = server.add("cat.jpg", b"\xff\xd8" + b"c" * 300_000)
    fetched = await fetcher(session, tmp_path).fetch(url, "image/jpeg", 15 * MB)
    assert fetched.stored.size == 300_002 and fetched.mime_type == "image/jpeg"
    assert (tmp_path / fetched.stored.key[:2] / fetched.stored.key).read_bytes() == b"\xff\xd8" + b"c" * 300_000


async def test_a_download_that_fails_twice_then_works_is_kept(server: FakeMediaServer,
                                                              session: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = server.add("dog.png", b"png-bytes", "image/png")
    server.fail_first("dog.png", 2)
    fetched = await fetcher(session, tmp_path).fetch(url, "image/png", MB)
    assert fetched.stored.size == 9 and server.hits["dog.png"] == 3


async def test_an_expired_url_is_given_up_after_the_configured_attempts(
        server: FakeMediaServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = server.add("old.jpg", b"x")
    server.expire("old.jpg")
    with pytest.raises(FetchFailed, match="answered 403"):
        await fetcher(session, tmp_path).fetch(url, "image/jpeg", MB)
    assert server.hits["old.jpg"] == 3


@pytest.mark.parametrize("announce", ["1", "0"])
async def test_a_20_mb_attachment_is_refused_by_the_cap_without_reading_it_all(
        server: FakeMediaServer, session: aiohttp.ClientSession, tmp_path: Path, announce: str) -> None:
    size = 20 * MB
    with pytest.raises(FetchRefused, match="allowed"):
        await fetcher(session, tmp_path).fetch(f"{server.url}/huge?size={size}&announce={announce}", "image/jpeg",
                                               15 * MB if announce == "1" else 2 * MB)
    assert server.sent["huge"] < size  # the client hung up: the rest was never sent
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing kept, not even a partial file


async def test_an_error_page_in_place_of_a_picture_is_refused_at_once(
        server: FakeMediaServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = server.add("page", b"<html>login</html>", "text/html")
    with pytest.raises(FetchRefused, match="text/html"):
        await fetcher(session, tmp_path).fetch(url, "image/jpeg", MB)
    assert server.hits["page"] == 1


async def test_a_server_that_never_answers_times_out(server: FakeMediaServer, session: aiohttp.ClientSession,
                                                     tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="within 0.3 s"):
        await fetcher(session, tmp_path, fetch_timeout_s=0.3, fetch_attempts=2).fetch(f"{server.url}/slow", None, MB)
    assert server.hits["slow"] == 2


# ----- SSRF: media URLs are named by tenants and webhooks; the bridge's own network is off limits -----

@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "100.64.0.1",
                                     "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1"])
def test_loopback_private_and_link_local_addresses_are_refused(address: str) -> None:
    assert not is_allowed(ipaddress.ip_address(address), ())


def test_public_addresses_and_listed_networks_are_allowed() -> None:
    assert is_allowed(ipaddress.ip_address("93.184.216.34"), ())
    assert is_allowed(ipaddress.ip_address("2606:4700::1111"), ())
    assert is_allowed(ipaddress.ip_address("10.1.2.3"), (ipaddress.ip_network("10.0.0.0/8"),))
    assert is_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), (ipaddress.ip_network("127.0.0.0/8"),))


async def test_a_loopback_url_is_refused_unless_its_network_is_allowed(server: FakeMediaServer, tmp_path: Path) -> None:
    url = server.add("cat.jpg", b"meow")
    async with guarded_session([]) as http:
        with pytest.raises(FetchRefused) as refused:
            await fetcher(http, tmp_path, fetch_allowed_networks=[]).fetch(url, "image/jpeg", MB)
    assert refused.value.code == "destination_refused" and "127.0.0.1" in refused.value.reason
    assert server.hits["cat.jpg"] == 0  # refused before any connection: not retried either


async def test_a_name_that_resolves_to_loopback_is_refused_as_it_resolves(server: FakeMediaServer,
                                                                         tmp_path: Path) -> None:
    url = server.add("cat.jpg", b"meow").replace("127.0.0.1", "localhost")
    async with guarded_session([]) as http:
        with pytest.raises(FetchRefused) as refused:
            await fetcher(http, tmp_path, fetch_allowed_networks=[]).fetch(url, "image/jpeg", MB)
    assert refused.value.code == "destination_refused" and "localhost" in refused.value.reason
    assert server.hits["cat.jpg"] == 0


async def test_a_redirect_to_a_refused_address_is_not_followed(server: FakeMediaServer, session: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    url = server.add("cat.jpg", b"meow")
    elsewhere = url.replace("127.0.0.1", "127.0.0.2")  # loopback too, but outside the allowed 127.0.0.1/32
    with pytest.raises(FetchRefused) as refused:
        await fetcher(session, tmp_path).fetch(f"{server.url}/redirect?to={elsewhere}", "image/jpeg", MB)
    assert refused.value.code == "destination_refused" and "127.0.0.2" in refused.value.reason


async def test_a_redirect_to_an_allowed_address_is_followed(server: FakeMediaServer, session: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    url = server.add("cat.jpg", b"meow")
    fetched = await fetcher(session, tmp_path).fetch(f"{server.url}/redirect?to={url}", "image/jpeg", MB)
    assert fetched.stored.size == 4 and server.hits["cat.jpg"] == 1
