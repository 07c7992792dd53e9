"""Outbound MMS media: fetched from where the PBX put them, checked against Flowroute's limits
before any attempt is spent, and handed to Flowroute as the bridge's own links."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest

from smsbridge.broker.consumer import MessageContext
from smsbridge.destinations import guarded_session
from smsbridge.events import DispatchRequest, OutboundRequest
from smsbridge.media.fetch import MediaFetcher
from smsbridge.media.outbound import OutboundMedia
from smsbridge.media.store import LocalStore
from smsbridge.outbound_rules import Refused
from smsbridge.secret import Secret
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.outbound import OutboundHandler
from tests.support.ledger import open_ledger
from tests.support.media import media_settings, start_receiver, with_media
from tests.support.media_server import FakeMediaServer, media_server
from tests.support.ports import free_port
from tests.support.settings import OUTBOUND_RULES, settings

ACME = MessageContext(origin_key="outbound.acme", attempt=1)
UPLOAD_TOKEN = "upload-token-acme-0123456789abcdef"


@dataclass
class Outbound:
    handler: OutboundHandler
    publisher: InMemoryPublisher
    server: FakeMediaServer
    http: aiohttp.ClientSession
    base_url: str
    media: OutboundMedia

    async def send(self, *urls: str, body: str = "see attached") -> DispatchRequest:
        request = OutboundRequest(tenant="acme", client_message_id="c-1", from_extension="101", to="+12065550199",
                                  body=body, media_urls=urls)
        await self.handler.handle(request, ACME)
        (queued,) = self.publisher.published
        return msgspec.json.decode(queued.body, type=DispatchRequest)


@asynccontextmanager
async def outbound_rig(tmp_path: Path, allowed: list[str], read_timeout_s: float | None = None
                       ) -> AsyncIterator[Outbound]:
    async with open_ledger("sqlite", tmp_path) as ledger, media_server() as server, \
            guarded_session(allowed) as http:
        store = LocalStore(tmp_path / "media")
        port = free_port()
        config = with_media(msgspec.structs.replace(settings(prefix="unit"), outbound_rules=OUTBOUND_RULES),
                            media_settings(tmp_path / "media", public_url=f"http://127.0.0.1:{port}",
                                           fetch_allowed_networks=allowed,
                                           upload_tokens={"acme": Secret(UPLOAD_TOKEN)}))
        if read_timeout_s is not None:
            config = msgspec.structs.replace(
                config, receiver=msgspec.structs.replace(config.receiver, read_timeout_s=read_timeout_s))
        runner, base_url = await start_receiver(store, ledger, upload=config, port=port)
        publisher = InMemoryPublisher()
        media = OutboundMedia(config, MediaFetcher(http, store, config.media), ledger)
        try:
            yield Outbound(OutboundHandler(config, publisher, ledger, media), publisher, server, http, base_url, media)
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


async def upload(outbound: Outbound, data: bytes, content_type: str, token: str = UPLOAD_TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    async with outbound.http.post(f"{outbound.base_url}/v1/media?file_name=menu.jpg", data=data,
                                  headers=headers) as response:
        return response.status, await response.json()


async def test_a_pbx_that_cannot_host_files_uploads_and_sends_the_bridges_link(outbound: Outbound) -> None:
    picture = b"\xff\xd8" + b"u" * 200_000
    status, answer = await upload(outbound, picture, "image/jpeg")
    assert status == 201 and answer["size"] == len(picture) and answer["url"].startswith(outbound.base_url)
    dispatch = await outbound.send(answer["url"])
    (link,) = dispatch.media_urls
    async with outbound.http.get(link) as response:
        assert response.status == 200 and await response.read() == picture
        assert 'filename="menu.jpg"' in response.headers["Content-Disposition"]


async def test_an_upload_needs_the_tenants_token_an_allowed_type_and_fits_flowroutes_limit(
        outbound: Outbound) -> None:
    assert (await upload(outbound, b"x", "image/jpeg", token="wrong-token"))[0] == 401
    status, answer = await upload(outbound, b"<svg/>", "image/svg+xml")
    assert status == 415 and answer["error"] == "media_type_not_allowed"
    status, answer = await upload(outbound, b"j" * 750_001, "image/jpeg")
    assert status == 413 and answer["error"] == "media_too_large"


async def test_another_tenant_cannot_send_a_link_the_bridge_gave_this_one(outbound: Outbound) -> None:
    """An uploaded file's link is the uploading tenant's: a second tenant naming it gets a refusal,
    not the first tenant's picture re-hosted under its own name."""
    status, answer = await upload(outbound, b"\xff\xd8" + b"s" * 1000, "image/jpeg")
    assert status == 201
    theirs = DispatchRequest(tenant="globex", config_id="gx", client_message_id="g-1", from_extension="300",
                             from_="+14255550100", to="+14255550199", media_urls=(answer["url"],), is_mms=True)
    with pytest.raises(Refused) as refused:
        await outbound.media.rehost(theirs)  # the stage's media step, as a second tenant's request reaches it
    assert refused.value.code == "media_unreachable" and "names nothing this tenant has stored" in str(refused.value)


async def test_an_upload_that_dribbles_in_past_the_read_timeout_gets_408_and_its_connection_closed(
        tmp_path: Path) -> None:
    async with outbound_rig(tmp_path, ["127.0.0.0/8"], read_timeout_s=0.5) as rig:
        parts = urlsplit(rig.base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write((f"POST /v1/media?file_name=a.jpg HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      f"Authorization: Bearer {UPLOAD_TOKEN}\r\nContent-Length: 100000\r\n\r\n").encode()
                     + b"\xff\xd8" + b"d" * 1000)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=60)  # the answer, then EOF (or a reset)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408") and b'"error":"timeout"' in answer
        status, stored = await upload(rig, b"\xff\xd8" + b"k" * 100, "image/jpeg")  # the endpoint still serves
        assert status == 201 and stored["size"] == 102
