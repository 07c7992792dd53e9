"""Media with a PBX that speaks only Flowroute (issue 19's `flowroute` target and relay send API),
on RabbitMQ: the Flowroute-shaped delivery carries the bridge's own link like the HTTP and AMQP
targets do, and a relayed MMS's `media_urls` pass the same checks and are re-hosted like any
outbound media."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from smsbridge.config import Settings
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.sandbox.flowroute_pbx import FlowroutePbx, send_jsonapi
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url
from tests.support.media import PICTURE, media_settings, with_media
from tests.support.media_server import FakeMediaServer, media_server
from tests.support.relay import FREEPBX, flowroute_pbx, relay_queue, relay_settings
from tests.support.settings import DID_MAIN

__all__ = ["flowroute_pbx", "relay_queue"]
MOBILE = "+12065550199"


@pytest.fixture
async def server() -> AsyncIterator[FakeMediaServer]:
    async with media_server() as fake:
        yield fake


def media_relay_settings(prefix: str, flowroute: FlowrouteSimulator, pbx: FlowroutePbx, tmp_path: Path) -> Settings:
    base = relay_settings(prefix, api_base=flowroute.url, pbx_hook=pbx.webhook_url)
    return with_media(base, media_settings(tmp_path / "media"))


def local_link(receiver_url: str, link: str) -> str:
    return f"{receiver_url}/media/{link.rsplit('/', 1)[1]}"  # the receiver's real port (public_url is a default)


async def test_the_flowroute_shaped_delivery_carries_the_bridges_link_not_flowroutes(
    relay_queue: str, start_bridge: StartBridge, flowroute: FlowrouteSimulator, flowroute_pbx: FlowroutePbx,
    server: FakeMediaServer, http: aiohttp.ClientSession, prefix: str, tmp_path: Path,
) -> None:
    bridge = await start_bridge(media_relay_settings(prefix, flowroute, flowroute_pbx, tmp_path))
    photo = {"url": server.add("menu.jpg", PICTURE), "file_name": "menu.jpg", "mime_type": "image/jpeg"}
    mms_id, status = await flowroute.inject_inbound(hook_url(bridge.receiver_url), sender=MOBILE, did=DID_MAIN,
                                                    body="tonight's menu", media=[photo])
    assert status == 200
    (doc,) = await flowroute_pbx.wait_texts(1)
    server.expire("menu.jpg")  # Flowroute's URL dies; the PBX's copy of the link must not
    (included,) = doc["included"]
    link = included["attributes"]["url"]
    assert "/media/" in link and not link.startswith(server.url)
    async with http.get(local_link(bridge.receiver_url, link)) as answer:
        assert answer.status == 200 and await answer.read() == PICTURE


async def test_a_relayed_mms_is_rehosted_and_one_over_750_kb_fails_before_any_attempt(
    relay_queue: str, start_bridge: StartBridge, flowroute: FlowrouteSimulator, flowroute_pbx: FlowroutePbx,
    server: FakeMediaServer, http: aiohttp.ClientSession, prefix: str, tmp_path: Path,
) -> None:
    bridge = await start_bridge(media_relay_settings(prefix, flowroute, flowroute_pbx, tmp_path))
    api = f"{bridge.receiver_url}/flowroute"
    small = server.add("plan.png", b"\x89PNG" + b"p" * 300_000, "image/png")
    status, doc = await send_jsonapi(http, api, FREEPBX, to=MOBILE, from_=DID_MAIN, body="the plan",
                                     media_urls=[small], dlr_callback=flowroute_pbx.dlr_url)
    assert status == 202
    receipts = await flowroute_pbx.wait_receipts(2)
    assert receipts[-1]["data"]["attributes"]["status"] == "delivered"
    (sent,) = flowroute.requests
    (given,) = sent["body"]["data"]["attributes"]["media_urls"]
    assert "/media/" in given and not given.startswith(server.url)  # Flowroute fetches the bridge's copy
    async with http.get(local_link(bridge.receiver_url, given)) as answer:
        assert answer.status == 200 and (await answer.read()).startswith(b"\x89PNG")

    big = server.add("poster.jpg", b"\xff\xd8" + b"j" * 800_000)
    status, doc = await send_jsonapi(http, api, FREEPBX, to=MOBILE, from_=DID_MAIN, body="the poster",
                                     media_urls=[big], dlr_callback=flowroute_pbx.dlr_url)
    assert status == 202
    receipts = await flowroute_pbx.wait_receipts(3)
    failed = receipts[-1]["data"]
    assert failed["id"] == doc["data"]["id"] and failed["attributes"]["status"] == "delivery failed"
    assert "750000 bytes per MMS" in failed["attributes"]["status_code_description"]
    assert len(flowroute.requests) == 1  # no attempt was spent on it
