"""Outbound MMS media: fetched from where the PBX put them, checked against Flowroute's limits
before any attempt is spent, and handed to Flowroute as the bridge's own links."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import pytest

from smsbridge.broker.consumer import MessageContext
from smsbridge.events import DispatchRequest, OutboundRequest
from smsbridge.media.destinations import guarded_session
from smsbridge.media.fetch import MediaFetcher
from smsbridge.media.outbound import OutboundMedia
from smsbridge.media.store import LocalStore
from smsbridge.outbound_rules import Refused
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.outbound import OutboundHandler
from tests.support.ledger import open_ledger
from tests.support.media import media_settings, start_receiver, with_media
from tests.support.media_server import FakeMediaServer, media_server
from tests.support.settings import OUTBOUND_RULES, settings

ACME = MessageContext(origin_key="outbound.acme", attempt=1)


@dataclass
class Outbound:
    handler: OutboundHandler
    publisher: InMemoryPublisher
    server: FakeMediaServer
    http: aiohttp.ClientSession
    base_url: str

    async def send(self, *urls: str, body: str = "see attached") -> DispatchRequest:
        request = OutboundRequest(tenant="acme", client_message_id="c-1", from_extension="101", to="+12065550199",
                                  body=body, media_urls=urls)
        await self.handler.handle(request, ACME)
        (queued,) = self.publisher.published
        return msgspec.json.decode(queued.body, type=DispatchRequest)


@asynccontextmanager
async def outbound_rig(tmp_path: Path, allowed: list[str]) -> AsyncIterator[Outbound]:
    async with open_ledger("sqlite", tmp_path) as ledger, media_server() as server, \
            guarded_session(allowed) as http:
        store = LocalStore(tmp_path / "media")
        runner, base_url = await start_receiver(store, ledger)
        config = with_media(msgspec.structs.replace(settings(prefix="unit"), outbound_rules=OUTBOUND_RULES),
                            media_settings(tmp_path / "media", public_url=base_url, fetch_allowed_networks=allowed))
        publisher = InMemoryPublisher()
        media = OutboundMedia(config, MediaFetcher(http, store, config.media), ledger)
        try:
            yield Outbound(OutboundHandler(config, publisher, ledger, media), publisher, server, http, base_url)
        finally:
            await runner.cleanup()


@pytest.fixture
async def outbound(tmp_path: Path) -> AsyncIterator[Outbound]:
    async with outbound_rig(tmp_path, ["127.0.0.0/8"]) as rig:  # the fake media server is on loopback
        yield rig


async def test_media_are_rehosted_under_the_bridges_public_links(outbound: Outbound) -> None:
    picture = b"\x89PNG" + b"p" * 400_000
    pbx_url = outbound.server.add("plan.png", picture, "image/png")
    dispatch = await outbound.send(pbx_url)
    (link,) = dispatch.media_urls
    assert link.startswith(f"{outbound.base_url}/media/") and dispatch.is_mms
    outbound.server.expire("plan.png")  # the PBX may take its copy down: Flowroute fetches ours
    async with outbound.http.get(link) as response:
        assert response.status == 200 and await response.read() == picture
        assert response.headers["Content-Type"] == "image/png"


async def test_media_over_750_kb_are_refused_before_any_attempt_with_a_clear_reason(outbound: Outbound) -> None:
    first = outbound.server.add("a.jpg", b"a" * 500_000)
    second = outbound.server.add("b.jpg", b"b" * 300_000)  # 800,000 bytes in all, text not even counted
    with pytest.raises(Refused) as refused:
        await outbound.send(first, second)
    assert refused.value.code == "media_too_large"
    assert "media 2" in str(refused.value) and "750000 bytes per MMS" in str(refused.value)
    assert outbound.publisher.published == []  # nothing reached the dispatcher: no MMS attempt spent


async def test_a_type_flowroute_does_not_carry_is_refused_before_any_attempt(outbound: Outbound) -> None:
    page = outbound.server.add("page.html", b"<html></html>", "text/html")
    with pytest.raises(Refused) as refused:
        await outbound.send(page)
    assert refused.value.code == "media_type_not_allowed" and "text/html" in str(refused.value)
    assert outbound.publisher.published == []


async def test_media_that_cannot_be_fetched_are_refused_naming_why(outbound: Outbound) -> None:
    gone = outbound.server.add("gone.jpg", b"x")
    outbound.server.expire("gone.jpg")
    with pytest.raises(Refused) as refused:
        await outbound.send(gone)
    assert refused.value.code == "media_unreachable" and "403" in str(refused.value)


async def test_a_media_url_on_the_bridges_own_network_is_refused_before_any_attempt(tmp_path: Path) -> None:
    """A tenant may name any URL: without an allow-list entry, loopback (or a private network, or
    the cloud's metadata address) is not fetched, and the request fails naming why."""
    async with outbound_rig(tmp_path, []) as rig:
        url = rig.server.add("plan.png", b"\x89PNG" + b"p" * 100, "image/png")
        with pytest.raises(Refused) as refused:
            await rig.send(url)
        assert refused.value.code == "media_destination_refused" and "media 1" in str(refused.value)
        assert rig.server.hits["plan.png"] == 0 and rig.publisher.published == []
