"""The `flowroute` delivery target: the body Flowroute would post, read the way FreePBX's and
FusionPBX's Flowroute hooks read it, sent once per PBX, against demo PBXs on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from smsbridge.config import FlowrouteTarget
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, Media, utcnow
from smsbridge.pbx.flowroute import FlowrouteAdapter, legacy_body, post_url, webhook_body
from smsbridge.sandbox.flowroute_pbx import FlowroutePbx, shape_problem
from smsbridge.sandbox.pbx import FakePbx
from tests.support.ports import free_port

PHOTO = Media(url="https://media.example/p/1.jpg", mime_type="image/jpeg", file_name="1.jpg", size=2048,
              media_id="m-1")


def delivery(extension: str = "101", extensions: tuple[str, ...] = ("101",), **fields: object) -> InboundDelivery:
    base: dict[str, object] = dict(tenant="acme", config_id="main", mdr_id="mdr2-abc", from_="+12065550199",
                                   to="+12065550100", extension=extension, extensions=extensions,
                                   body="Table for two?", received_at=utcnow())
    base.update(fields)
    return InboundDelivery(**base)  # type: ignore[arg-type]


def target(url: str = "http://127.0.0.1:9/hook", **fields: object) -> FlowrouteTarget:
    return FlowrouteTarget(tenant="acme", url=url, **fields)  # type: ignore[arg-type]


def test_sms_body_is_flowroute_json_api_with_the_original_id() -> None:
    doc = webhook_body(delivery())
    assert set(doc) == {"data"}
    data = doc["data"]
    assert data["id"] == "mdr2-abc" and data["type"] == "message"
    attributes = data["attributes"]
    assert attributes["to"] == "12065550100" and attributes["from"] == "12065550199"
    assert attributes["body"] == "Table for two?" and attributes["is_mms"] is False
    assert attributes["direction"] == "inbound" and attributes["message_encoding"] == 0
    assert attributes["timestamp"].endswith("Z") and attributes["status"] == "delivered"
    assert shape_problem(doc) is None


def test_mms_carries_its_media_in_included_linked_from_relationships() -> None:
    doc = webhook_body(delivery(is_mms=True, media=(PHOTO,), body=""))
    (item,) = doc["included"]
    assert item == {"id": "m-1", "type": "media", "attributes": {
        "file_name": "1.jpg", "file_size": 2048, "mime_type": "image/jpeg", "url": "https://media.example/p/1.jpg"}}
    assert doc["data"]["relationships"] == {"media": {"data": [{"id": "m-1", "type": "media"}]}}
    assert doc["data"]["attributes"]["is_mms"] is True
    assert shape_problem(doc) is None


def test_unicode_body_is_encoding_8() -> None:
    assert webhook_body(delivery(body="Merci 🙂"))["data"]["attributes"]["message_encoding"] == 8


def test_the_validator_refuses_what_the_pbx_hooks_could_not_read() -> None:
    good = webhook_body(delivery(is_mms=True, media=(PHOTO,)))
    assert shape_problem({"to": "12065550100"}) is not None
    plus = webhook_body(delivery())
    plus["data"]["attributes"]["to"] = "+12065550100"
    assert shape_problem(plus) == "data.attributes.to is not 11 digits"
    del good["included"][0]["attributes"]["url"]
    assert shape_problem(good) == "included[].attributes.url missing"


def test_legacy_payload_is_the_flat_v2_body_with_media_as_links() -> None:
    assert legacy_body(delivery(media=(PHOTO,), is_mms=True)) == {
        "to": "12065550100", "from": "12065550199", "body": "Table for two?\nhttps://media.example/p/1.jpg",
        "id": "mdr2-abc"}


async def test_a_legacy_target_posts_the_flat_body(pbx: FakePbx, http: aiohttp.ClientSession) -> None:
    await FlowrouteAdapter(target(pbx.url, payload="legacy"), http).deliver(delivery())
    ((_, body, _),) = pbx.attempts
    assert body == legacy_body(delivery())


def test_a_ring_group_to_one_pbx_is_posted_once() -> None:
    group = ("101", "102")
    assert post_url(target(), delivery("101", group)) == "http://127.0.0.1:9/hook"
    assert post_url(target(), delivery("102", group)) is None


def test_extension_urls_let_rules_pick_the_pbx() -> None:
    routed = target(extension_urls={"fusion": "http://127.0.0.1:9/fusion"})
    group = ("101", "fusion", "102")
    assert post_url(routed, delivery("101", group)) == "http://127.0.0.1:9/hook"
    assert post_url(routed, delivery("fusion", group)) == "http://127.0.0.1:9/fusion"
    assert post_url(routed, delivery("102", group)) is None


async def test_adapter_posts_what_the_pbx_hook_accepts(http: aiohttp.ClientSession) -> None:
    pbx = FlowroutePbx()
    url = await pbx.start()
    try:
        await FlowrouteAdapter(target(url), http).deliver(delivery(is_mms=True, media=(PHOTO,)))
        await FlowrouteAdapter(target(url), http).deliver(delivery("102", ("101", "102")))
        (text,) = await pbx.wait_texts(1)
    finally:
        await pbx.stop()
    assert pbx.refused == [] and pbx.posts == 1
    assert text["data"]["id"] == "mdr2-abc" and text["included"][0]["attributes"]["url"] == PHOTO.url


async def test_headers_are_exact_json_and_the_mdr_id_as_idempotency_key(pbx: FakePbx,
                                                                        http: aiohttp.ClientSession) -> None:
    await FlowrouteAdapter(target(pbx.url), http).deliver(delivery())
    ((status, body, headers),) = pbx.attempts
    assert status == 200 and body["data"]["id"] == "mdr2-abc"
    assert headers["Content-Type"] == "application/json" and headers["Idempotency-Key"] == "mdr2-abc"
    assert "Authorization" not in headers


@pytest.mark.parametrize("status", [202, 204])
async def test_any_2xx_is_delivered(pbx: FakePbx, http: aiohttp.ClientSession, status: int) -> None:
    pbx.script([status])
    await FlowrouteAdapter(target(pbx.url), http).deliver(delivery())


async def test_5xx_is_retried_and_4xx_is_permanent(pbx: FakePbx, http: aiohttp.ClientSession) -> None:
    adapter = FlowrouteAdapter(target(pbx.url), http)
    pbx.script([503, 400])
    with pytest.raises(RetryableError):
        await adapter.deliver(delivery())
    with pytest.raises(PermanentError) as info:
        await adapter.deliver(delivery())
    assert info.value.code == "pbx_400"


async def test_refused_connection_is_retryable(http: aiohttp.ClientSession) -> None:
    with pytest.raises(RetryableError, match="PBX unreachable"):
        await FlowrouteAdapter(target(f"http://127.0.0.1:{free_port()}/hook"), http).deliver(delivery())
