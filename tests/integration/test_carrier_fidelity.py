"""Every Flowroute payload we know of, through the real receiver and RabbitMQ, to the fake PBX or
to the status event, with the exact outcome (issue 18)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.config import InboundRule
from smsbridge.dlq import DeadLetterQueue, Filter
from smsbridge.flowroute.dlr import CODES, classify_dlr
from smsbridge.flowroute.payloads import dlr_payload
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.pbx_client import publish_request, watch
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.integration.test_outbound_flow import request
from tests.support.broker import depth, scratch_queue, take
from tests.support.fixtures import raw_payload
from tests.support.settings import settings, with_flowroute
from tests.support.wait import eventually

FRONT, BILLING = ["101", "102"], ["201"]
S3 = "https://s3.us-west-2.amazonaws.com/flowroute-messaging-media"
# fixture → (extensions, from, to, body, media URLs, names of attachments not delivered)
MESSAGES: dict[str, tuple[list[str], str, str, str, list[str], list[str]]] = {
    "sms_jsonapi_2024": (FRONT, "+12065550199", "+12065550100", "Greetings on Friday evening!", [], []),
    "legacy_flat_mdr1": (FRONT, "+18555550168", "+12065550100", "Hello there from Flowroute!", [], []),
    "legacy_flat_mdr2_2024": (BILLING, "+18015550123", "+12065550101", "bla bla bla", [], []),
    "mms_2017": (FRONT, "+14255550142", "+12065550100", "again message", [
        "https://mms-media-prod.s3.amazonaws.com/939305103458545664-IMG_6735.jpg?AWSAccessKeyId=REDACTED"
        "&Expires=1513387562&x-amz-security-token=REDACTED&Signature=REDACTED"], []),
    "mms_2022_null_body": (FRONT, "+12065550199", "+12065550100", "", [f"{S3}/xxxxxxxxx"], []),
    "mms_three_media": (FRONT, "+12065550199", "+12065550100", "photos from the site visit",
                        [f"https://media.example/m-{i}" for i in (2, 1, 3)], []),
    # new: "to" as a JSON number (a real 2022 capture), an international sender
    "sms_2022_numeric_to": (FRONT, "+447911123456", "+12065550100", "Is the shop open on Sunday?", [], []),
    # new: one attachment without a URL; the text and the other attachment still go
    "mms_null_media_url": (FRONT, "+12065550199", "+12065550100", "two photos, one lost", [f"{S3}/n-2"],
                           ["image000000.png"]),
}
# fixture → (state, reason_code, dlr_level, dlr_code)
RECEIPTS: dict[str, tuple[str, str | None, int | None, int | None]] = {
    "dlr_flat_level1": ("sent", None, None, None),
    "dlr_flat_level2": ("buffered", None, None, 1003),
    "dlr_jsonapi_level1_null_code": ("sent", None, 1, None),
    "dlr_jsonapi_level2": ("buffered", None, 2, 1003),
    "dlr_jsonapi_delivered_string_code": ("delivered", None, 2, 1004),
    "dlr_jsonapi_opted_out": ("failed", "opted_out", 2, 1110),
}


async def status_queue_for(channel: AbstractChannel, prefix: str) -> AbstractQueue:
    queue = await scratch_queue(channel, f"{prefix}.test-status")
    await queue.bind(names.status_exchange(prefix), routing_key="status.acme.#")
    return queue


async def metric(http: aiohttp.ClientSession, base: str, line: str) -> None:
    """Wait until the /metrics page shows `line`."""
    async def shown() -> bool:
        async with http.get(f"{base}/metrics") as response:
            return line in await response.text()

    await eventually(shown, what=f"{line!r} on /metrics")


async def test_every_known_inbound_shape_reaches_the_pbx_exactly(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url))
    for name in MESSAGES:
        status, body = await post(http, hook_url(bridge.receiver_url), raw_payload(name))
        assert (status, body["status"]) == (200, "accepted"), name
    received = await pbx.wait_for(sum(len(expected[0]) for expected in MESSAGES.values()), timeout=30)
    by_mdr: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for delivery in received:
        by_mdr[delivery["mdr_id"]].append(delivery)
    for name, (extensions, sender, did, text, urls, lost) in MESSAGES.items():
        raw = msgspec.json.decode(raw_payload(name))
        deliveries = by_mdr[raw["data"]["id"] if "data" in raw else raw["id"]]
        assert sorted(d["extension"] for d in deliveries) == extensions, name
        for delivery in deliveries:
            assert (delivery["from"], delivery["to"], delivery["body"]) == (sender, did, text), name
            assert [m["url"] for m in delivery["media"]] == urls, name
            assert delivery["is_mms"] is name.startswith("mms"), name
            assert [p["file_name"] for p in delivery["media_problems"]] == lost, name


async def test_an_attachment_without_a_url_is_named_in_the_delivery(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    """It used to park the whole MMS, text included, in the dead-letter queue."""
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url))
    _, answer = await post(http, hook_url(bridge.receiver_url), raw_payload("mms_null_media_url"))
    assert answer["status"] == "accepted"
    delivery = (await pbx.wait_for(2))[0]
    assert delivery["media_problems"] == [
        {"media_id": "n-1", "file_name": "image000000.png", "mime_type": "image/png",
         "reason": "Flowroute gave no URL for it"}]
    assert await depth(channel, names.dead_queue(prefix)) == 0


async def test_every_known_receipt_shape_becomes_the_exact_status(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    queue = await status_queue_for(channel, prefix)
    for name in RECEIPTS:
        url = hook_url(bridge.receiver_url) + f"?cmid={name}"
        assert (await post(http, url, raw_payload(name)))[0] == 200, name
    events = [msgspec.json.decode(m.body) for m in await take(channel, queue.name, count=len(RECEIPTS), timeout=30)]
    got = {e["client_message_id"]: (e["state"], e["reason_code"], e["dlr_level"], e["dlr_code"]) for e in events}
    assert got == RECEIPTS


async def test_every_documented_dlr_code_reaches_the_pbx_with_its_reason(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    """All 50 codes of Flowroute's code page, each posted as Flowroute would (status code and its
    description), each turned into the status the table promises (and docs/flowroute-codes.md shows)."""
    bridge = await start_bridge(settings(prefix=prefix))
    queue = await status_queue_for(channel, prefix)
    for code, known in CODES.items():
        payload = dlr_payload(f"mdr2-{code:032d}", level=2, status="delivery failed" if code >= 1005 else "",
                              code=code, description=known.label, body="Your table is ready")
        url = hook_url(bridge.receiver_url) + f"?cmid=code-{code}"
        assert (await post(http, url, msgspec.json.encode(payload)))[0] == 200
    events = [msgspec.json.decode(m.body) for m in await take(channel, queue.name, count=len(CODES), timeout=60)]
    assert len(events) == 50
    for event in events:
        code = int(event["client_message_id"].removeprefix("code-"))
        expected = classify_dlr(2, "delivery failed" if code >= 1005 else "", code, CODES[code].label)
        assert (event["state"], event["reason_code"], event["reason"]) == tuple(expected), code
        assert (event["dlr_code"], event["mdr_id"]) == (code, f"mdr2-{code:032d}")
        if code >= 1005:
            assert event["state"] == "failed" and "carrier reported error" not in event["reason"]


async def test_an_unknown_code_keeps_flowroutes_description(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    queue = await status_queue_for(channel, prefix)
    payload = dlr_payload("mdr2-" + "7" * 32, level=2, status="delivery failed", code=1299,
                          description="Carrier blocked the sender")
    await post(http, hook_url(bridge.receiver_url) + "?cmid=pbx-9", msgspec.json.encode(payload))
    (message,) = await take(channel, queue.name)
    event = msgspec.json.decode(message.body)
    assert (event["state"], event["reason_code"], event["reason"]) == (
        "failed", "carrier_error", "carrier reported error 1299: Carrier blocked the sender")


async def test_a_receipt_for_a_message_the_bridge_never_sent_is_counted_not_forwarded(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    """Without our `cmid` and unknown to the ledger (another system on the Flowroute account, an
    old message): no PBX asked about it, so no status with `client_message_id: null`."""
    bridge = await start_bridge(settings(prefix=prefix))
    queue = await status_queue_for(channel, prefix)
    assert (await post(http, hook_url(bridge.receiver_url), raw_payload("dlr_flat_level2")))[0] == 200
    await metric(http, bridge.receiver_url or "", 'smsbridge_dlr_unknown_message_total{config="main"} 1.0')
    assert await depth(channel, queue.name) == 0
    assert await depth(channel, names.unrouted_queue(prefix)) == 0


async def test_a_receipt_without_cmid_for_a_message_we_sent_reaches_its_sender(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, http: aiohttp.ClientSession, prefix: str,
    channel: AbstractChannel, statuses: AbstractQueue,  # noqa: F811
) -> None:
    """An account-level DLR callback carries no `cmid`: the ledger knows the Flowroute id."""
    bridge = await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    await publish_request(channel, prefix, request())
    seen = await watch(statuses, "pbx-1", timeout=30)
    mdr_id = seen[0].mdr_id
    assert mdr_id is not None
    payload = dlr_payload(mdr_id, level=2, status="delivery failed", code=1105,
                          description="Destination Carrier Disabled")
    assert (await post(http, hook_url(bridge.receiver_url), msgspec.json.encode(payload)))[0] == 200
    (failed,) = await watch(statuses, "pbx-1", until=frozenset({"failed"}), timeout=30)
    assert (failed.state, failed.reason_code, failed.mdr_id) == ("failed", "carrier_disabled", mdr_id)


async def test_a_webhook_not_labelled_json_is_read_and_counted(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url))
    base = bridge.receiver_url or ""
    for content_type in ("application/json", "application/json; charset=utf-8", "text/plain", "text/plain"):
        async with http.post(hook_url(base), data=raw_payload("sms_jsonapi_2024"),
                             headers={"Content-Type": content_type}) as response:
            assert response.status == 200 and (await response.json())["status"] == "accepted"
    await metric(http, base,
                 'smsbridge_webhook_non_json_content_type_total{config="main",content_type="text/plain"} 2.0')
    async with http.get(f"{base}/metrics") as response:
        assert 'content_type="application/json' not in await response.text()


@pytest.mark.parametrize("to", ["+18765550100", "+14415550100"])
async def test_help_reply_is_not_sent_where_flowroute_cannot_send(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str, to: str,
) -> None:
    """A HELP from Jamaica or Bermuda still reaches the PBX; no auto-reply is attempted."""
    base = settings(prefix=prefix, pbx_url=pbx.url, help_reply="Acme: reply STOP to opt out.")
    bridge = await start_bridge(with_flowroute(base, flowroute.url))
    body = raw_payload("sms_jsonapi_2024").replace(b"Greetings on Friday evening!", b"help").replace(
        b'"from": "12065550199"', f'"from": "{to[1:]}"'.encode())
    assert (await post(http, hook_url(bridge.receiver_url), body))[0] == 200
    deliveries = await pbx.wait_for(2)
    assert {d["from"] for d in deliveries} == {to} and deliveries[0]["keyword"] == "HELP"
    # A HELP from a US number now: its reply is dispatched after any reply to the first would be.
    us_help = body.replace(f'"from": "{to[1:]}"'.encode(), b'"from": "12065550199"').replace(
        b"mdr2-4e5435f325d9431f9e64118b20895b08", b"mdr2-4e5435f325d9431f9e64118b20895b09")
    assert (await post(http, hook_url(bridge.receiver_url), us_help))[0] == 200
    await eventually(lambda: bool(flowroute.requests), what="the HELP auto-reply to the US number")
    await pbx.wait_for(4)
    assert [r["body"]["data"]["attributes"]["to"] for r in flowroute.requests] == ["12065550199"]


async def test_webhooks_parked_by_an_older_version_are_delivered_by_a_replay(
    start_bridge: StartBridge, pbx: FakePbx, prefix: str, channel: AbstractChannel,
) -> None:
    """Before issue 18 a numeric `to` and an MMS with a media entry without URL were parked as
    `unknown_shape`; docs/operations.md says a replay delivers them now."""
    config = settings(prefix=prefix, pbx_url=pbx.url, rules=[InboundRule(config="main", extensions=["101"])])
    bridge = await start_bridge(config)
    assert bridge.publisher is not None
    extra = {names.H_CONFIG: "main", names.H_ROUTING_KEY: "receiver"}
    for name, reason in (("sms_2022_numeric_to", "JSON:API message: Expected `str`, got `int`"),
                         ("mms_null_media_url", "included media 'n-1': Expected `str`, got `null`")):
        await bridge.publisher.park(prefix, "receiver", raw_payload(name), reason=reason, code="unknown_shape",
                                    extra=extra)
    confirm_channel = await bridge.connection.channel(publisher_confirms=True)  # type: ignore[union-attr]
    queue = DeadLetterQueue(confirm_channel, config, Publisher(confirm_channel, timeout=5))
    await eventually(lambda: _walked(queue, 2), what="both parked webhooks listed")
    done, kept = await queue.walk(Filter(stage="receiver"), act=queue.replay)
    assert len(done) == 2 and kept == []
    received = sorted(await pbx.wait_for(2), key=lambda d: d["body"])
    assert [(d["from"], d["body"]) for d in received] == [
        ("+447911123456", "Is the shop open on Sunday?"), ("+12065550199", "two photos, one lost")]
    assert [p["media_id"] for p in received[1]["media_problems"]] == ["n-1"]
    await confirm_channel.close()


async def _walked(queue: DeadLetterQueue, count: int) -> bool:
    found, _ = await queue.walk(Filter(stage="receiver"))
    return len(found) == count
