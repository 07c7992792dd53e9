"""PBX request → outbound worker → dispatcher → Flowroute simulator → statuses back, for real."""

from __future__ import annotations

import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.broker import names
from smsbridge.events import OutboundRequest
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.pbx_client import publish_request, watch
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.broker import header, take
from tests.support.fixtures import raw_payload
from tests.support.settings import TOKEN, settings, with_flowroute
from tests.support.wait import eventually

MOBILE = "+12065550199"


def request(client_id: str = "pbx-1", **fields: object) -> OutboundRequest:
    base: dict[str, object] = dict(tenant="acme", client_message_id=client_id, from_extension="101", to=MOBILE,
                                   body="Your table is ready")
    base.update(fields)
    return OutboundRequest(**base)  # type: ignore[arg-type]



async def test_request_is_sent_once_accepted_then_delivered_with_the_client_id(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    bridge = await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    await publish_request(channel, prefix, request())
    seen = await watch(statuses, "pbx-1", timeout=15)
    assert [s.state for s in seen] == ["accepted", "sent", "delivered"]
    accepted = seen[0]
    assert accepted.mdr_id and accepted.mdr_id.startswith("mdr2-") and accepted.segments == 1
    assert {s.mdr_id for s in seen} == {accepted.mdr_id}
    (sent,) = flowroute.requests
    assert sent["status"] == 202 and sent["user"] == "AK-test"
    assert sent["content_type"] == "application/vnd.api+json"
    assert sent["body"] == {"data": {"type": "message", "attributes": {
        "to": "12065550199", "from": "12065550100", "body": "Your table is ready",
        "dlr_callback": f"{bridge.settings.receiver.public_url}/webhooks/flowroute/main/{TOKEN}?cmid=pbx-1"}}}


async def test_429_and_5xx_then_success_sends_one_message(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    flowroute.faults.script = [429, 503]
    await publish_request(channel, prefix, request())
    seen = await watch(statuses, "pbx-1", until=frozenset({"accepted", "failed"}), timeout=20)
    assert [s.state for s in seen] == ["accepted"]
    assert flowroute.statuses() == [429, 503, 202]
    assert len(flowroute.messages) == 1


async def test_opted_out_recipient_fails_with_the_stop_reason_and_is_not_retried(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    flowroute.behaviours[MOBILE] = "opted_out"
    await publish_request(channel, prefix, request())
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert failed.state == "failed" and failed.reason_code == "opted_out"
    assert failed.reason and failed.reason.startswith("recipient opted out (STOP)")
    (dead,) = await take(channel, names.dead_queue(prefix))  # the last step: nothing is sent after it
    assert flowroute.statuses() == [400]
    assert header(dead, names.H_STAGE) == "dispatch.test"


@pytest.mark.parametrize(("behaviour", "status"), [("opted_out_title", 400), ("opted_out_403", 403)])
async def test_1110_in_the_title_only_is_an_opt_out_whatever_the_status(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue, behaviour: str, status: int,
) -> None:
    """Flowroute's error object has no `code` field, and which field carries 1110 is undocumented:
    a 400 or a 403 whose title alone says 1110 reaches the PBX as `opted_out`, not as a
    registration problem, and is never retried."""
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    flowroute.behaviours[MOBILE] = behaviour
    await publish_request(channel, prefix, request())
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert (failed.state, failed.reason_code) == ("failed", "opted_out")
    assert failed.reason == "recipient opted out (STOP): they must text UNSTOP before you can text them again"
    assert flowroute.statuses() == [status]


async def test_sender_not_on_the_flowroute_account_gets_the_403_hint(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    flowroute.accounts["AK-test"].numbers = {"+12065550101"}  # the bridge's DID is not on the account
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    await publish_request(channel, prefix, request())
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert failed.reason_code == "not_permitted" and "+12065550100" in (failed.reason or "")
    assert "must be on this Flowroute account" in (failed.reason or "")


async def test_destination_outside_the_us_and_canada_fails_before_any_attempt(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    await publish_request(channel, prefix, request(to="+18765550100"))
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert failed.reason_code == "destination_not_us_ca"
    assert failed.reason == "destination +18765550100 is in Jamaica: Flowroute sends only to the US and Canada"
    assert flowroute.requests == []


async def test_unregistered_sender_403_says_10dlc(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    flowroute.behaviours[MOBILE] = "unregistered"
    await publish_request(channel, prefix, request())
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert failed.reason_code == "not_permitted" and "10DLC" in (failed.reason or "")


async def test_wrong_credentials_fail_plainly(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    flowroute.accounts["AK-test"].secret = "rotated"
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    await publish_request(channel, prefix, request())
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert failed.reason_code == "credentials" and "Access Key / Secret Key" in (failed.reason or "")
    assert "SK-test" not in (failed.reason or "")


async def test_request_the_rules_refuse_fails_at_once_and_is_dead_lettered(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    await publish_request(channel, prefix, request(from_extension="999"))
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert failed.state == "failed" and failed.reason_code == "not_allowed"
    assert "extension 999 may not send texts" in (failed.reason or "")
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_STAGE) == "outbound" and header(dead, names.H_ORIGIN_KEY) == "outbound.acme"
    assert flowroute.requests == []


async def test_a_pbx_cannot_publish_for_another_tenant(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    exchange = await channel.get_exchange(names.requests_exchange(prefix))
    import aio_pika

    body = msgspec.json.encode(request())
    await exchange.publish(aio_pika.Message(body), routing_key="outbound.beta")
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_REASON_CODE) == "tenant_mismatch"
    assert flowroute.requests == []


async def test_sixty_requests_never_exceed_five_per_second_and_get_no_429(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    for n in range(60):
        await publish_request(channel, prefix, request(f"bulk-{n}"))
    await eventually(lambda: len(flowroute.messages) >= 60, timeout=90, what="60 sends at 5/s")
    assert len(flowroute.messages) == 60
    assert flowroute.max_in_window("AK-test") <= 5
    assert 429 not in flowroute.statuses()


async def test_help_keyword_gets_the_configured_auto_reply(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, pbx: FakePbx, http: object, prefix: str,
) -> None:
    base = settings(prefix=prefix, pbx_url=pbx.url, help_reply="Acme: reply STOP to opt out.")
    bridge = await start_bridge(with_flowroute(base, flowroute.url))
    body = raw_payload("sms_jsonapi_2024").replace(b"Greetings on Friday evening!", b"help")
    assert (await post(http, hook_url(bridge.receiver_url), body))[0] == 200
    await eventually(lambda: bool(flowroute.messages), what="the HELP auto-reply reaching Flowroute")
    (reply,) = flowroute.requests
    attributes = reply["body"]["data"]["attributes"]
    assert (attributes["from"], attributes["to"], attributes["body"]) == (
        "12065550100", "12065550199", "Acme: reply STOP to opt out.")
    assert len(await pbx.wait_for(2)) == 2  # the PBX still sees the HELP text


async def test_an_oversized_field_fails_by_name_with_a_bounded_dead_letter_and_no_reconnect(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
    statuses: AbstractQueue,
) -> None:
    """Issue 16 point 3: a 200 kB `to` (and a PBX header near a frame's size) once made RabbitMQ
    close the bridge's connection (frame_too_large) on every dead-letter attempt."""
    import aio_pika

    bridge = await start_bridge(with_flowroute(settings(prefix=prefix), flowroute.url))
    assert bridge.connection is not None
    reconnects: list[object] = []
    bridge.connection.close_callbacks.add(lambda *args: reconnects.append(args))
    exchange = await channel.get_exchange(names.requests_exchange(prefix))
    body = msgspec.json.encode(request(to="1" * 200_000))
    await exchange.publish(aio_pika.Message(body, headers={"x-pbx-trace": "t" * 100_000}), routing_key="outbound.acme")
    (failed,) = await watch(statuses, "pbx-1", timeout=15)
    assert (failed.state, failed.reason_code) == ("failed", "invalid_field")
    assert failed.reason is not None and failed.reason.startswith("field 'to' is longer than 32 characters")
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert len(header(dead, names.H_REASON)) < 400 and "x-pbx-trace" not in (dead.headers or {})
    assert reconnects == [] and not bridge.connection.is_closed
