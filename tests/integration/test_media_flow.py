"""An MMS through the whole bridge with media kept: webhook → receiver → RabbitMQ → inbound
(fetch from the fake media server) → delivery → fake PBX, whose link is then fetched from the
bridge's own receiver after Flowroute's URL has died."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from smsbridge.flowroute.simulator import inbound_payload
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.support.media import PICTURE, media_settings, with_media
from tests.support.media_server import media_server
from tests.support.settings import DID_MAIN, TOKEN, settings


async def test_a_texted_picture_is_viewable_through_the_bridges_link_after_flowroutes_url_died(
        start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, tmp_path: Path) -> None:
    async with media_server() as server:
        url = server.add("kitchen.jpg", PICTURE)
        config = with_media(settings(prefix=prefix, pbx_url=pbx.url), media_settings(tmp_path / "media"))
        bridge = await start_bridge(config)
        base = bridge.receiver_url
        media = [{"url": url, "file_name": "kitchen.jpg", "mime_type": "image/jpeg"}]
        payload = inbound_payload(sender="+12065550199", did=DID_MAIN, body="the kitchen", media=media)
        async with http.post(f"{base}/webhooks/flowroute/main/{TOKEN}", json=payload) as response:
            assert response.status == 200
        delivery = (await pbx.wait_for(2))[0]
        server.expire("kitchen.jpg")
    (item,) = delivery["media"]
    assert item["file_name"] == "kitchen.jpg" and "/media/" in item["url"] and delivery["media_problems"] == []
    link = f"{base}/media/{item['url'].rsplit('/', 1)[1]}"  # the receiver's real address (public_url is a default)
    async with http.get(link) as answer:
        assert answer.status == 200 and await answer.read() == PICTURE
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert delivery["body"] == "the kitchen"
