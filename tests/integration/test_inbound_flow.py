"""Webhook → receiver → RabbitMQ → inbound worker → delivery worker → fake PBX, for real."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names
from smsbridge.config import InboundRule
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.support.broker import header, scratch_queue, take
from tests.support.fixtures import raw_payload
from tests.support.settings import TOKEN, settings


def hook_url(base: str | None, config: str = "main", token: str = TOKEN) -> str:
    return f"{base}/webhooks/flowroute/{config}/{token}"


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict[str, object]]:
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


async def test_sms_reaches_both_extensions_of_a_ring_group(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url))
    status, body = await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    assert status == 200 and body["status"] == "accepted"
    received = await pbx.wait_for(2)
    assert sorted(d["extension"] for d in received) == ["101", "102"]
    first = received[0]
    assert first["from"] == "+12065550199" and first["to"] == "+12065550100"
    assert first["body"] == "Greetings on Friday evening!" and first["extensions"] == ["101", "102"]
    assert first["kind"] == "inbound_delivery" and first["version"] == 1
    keys = sorted(headers["Idempotency-Key"] for _, _, headers in pbx.attempts)
    assert keys == ["mdr2-4e5435f325d9431f9e64118b20895b08:101", "mdr2-4e5435f325d9431f9e64118b20895b08:102"]
    assert all(headers["Authorization"] == "Bearer pbx-secret" for _, _, headers in pbx.attempts)


async def test_mms_media_reach_the_pbx(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url))
    status, _ = await post(http, hook_url(bridge.receiver_url), raw_payload("mms_three_media"))
    assert status == 200
    delivery = (await pbx.wait_for(2))[0]
    assert delivery["is_mms"] is True
    assert [m["url"] for m in delivery["media"]] == [f"https://media.example/m-{i}" for i in (2, 1, 3)]


async def test_pbx_503_twice_then_200_is_delivered_once_after_backoff(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    rules = [InboundRule(config="main", extensions=["101"])]
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url, rules=rules))
    pbx.script([503, 503])
    started = time.monotonic()
    status, _ = await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    assert status == 200
    await pbx.wait_for(1)
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # would a duplicate still arrive?
    assert [s for s, _, _ in pbx.attempts] == [503, 503, 200]
    assert len(pbx.received) == 1
    assert {h["Idempotency-Key"] for _, _, h in pbx.attempts} == {f"{pbx.received[0]['mdr_id']}:101"}
    # base 0.2 s with equal jitter: first retry ≥ 0.1 s, second ≥ 0.2 s
    assert elapsed >= 0.3


async def test_pbx_400_dead_letters_with_the_pbx_answer(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    rules = [InboundRule(config="main", extensions=["101"])]
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url, rules=rules))
    pbx.script([400])
    status, _ = await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    assert status == 200
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_STAGE) == "delivery"
    assert header(dead, names.H_REASON_CODE) == "pbx_400"
    assert "PBX refused the delivery with 400" in header(dead, names.H_REASON)
    assert "scripted 400" in header(dead, names.H_REASON)
    assert header(dead, names.H_ATTEMPT) == 1
    assert msgspec.json.decode(dead.body)["extension"] == "101"
    assert [s for s, _, _ in pbx.attempts] == [400]


async def test_pbx_down_for_good_dead_letters_after_max_attempts(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    rules = [InboundRule(config="main", extensions=["101"])]
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url, rules=rules))
    pbx.script([503] * 10)
    await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    (dead,) = await take(channel, names.dead_queue(prefix), timeout=20)
    assert header(dead, names.H_REASON_CODE) == "exhausted"
    assert "gave up after 5 attempts" in header(dead, names.H_REASON)
    assert len(pbx.attempts) == 5


async def test_no_inbound_rule_dead_letters_with_the_did(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    rules = [InboundRule(config="main", did="+12065550101", extensions=["201"])]
    bridge = await start_bridge(settings(prefix=prefix, rules=rules))
    status, _ = await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    assert status == 200
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_STAGE) == "inbound"
    # masked in the header like in the logs (the full DID is in the body: `smsbridge dlq show`)
    assert header(dead, names.H_REASON) == "no inbound rule for DID +1******0100 in configuration 'main'"


async def test_fallback_extension_when_no_rule_matches(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    rules = [InboundRule(config="main", did="+12065550101", extensions=["201"])]
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url, rules=rules, fallback_extensions=["100"]))
    await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    assert [d["extension"] for d in await pbx.wait_for(1)] == ["100"]


async def test_keyword_is_marked_on_the_delivery(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url))
    body = raw_payload("legacy_flat_mdr2_2024").replace(b"bla bla bla", b" Help ")
    await post(http, hook_url(bridge.receiver_url), body)
    (delivery,) = await pbx.wait_for(1)
    assert delivery["keyword"] == "HELP" and delivery["extension"] == "201"


async def test_dlr_becomes_a_status_event_for_the_tenant(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    queue = await scratch_queue(channel, f"{prefix}.test-status")
    await queue.bind(names.status_exchange(prefix), routing_key="status.acme.#")
    url = hook_url(bridge.receiver_url) + "?cmid=pbx-77"
    assert (await post(http, url, raw_payload("dlr_jsonapi_opted_out")))[0] == 200
    (message,) = await take(channel, queue.name)
    event = msgspec.json.decode(message.body)
    assert message.routing_key == "status.acme.failed"
    assert event["state"] == "failed" and event["reason_code"] == "opted_out"
    assert event["client_message_id"] == "pbx-77" and event["mdr_id"] == "mdr2-22222222222222222222222222222222"


async def test_status_nobody_is_bound_for_is_kept_in_unrouted(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    url = hook_url(bridge.receiver_url) + "?cmid=pbx-78"
    assert (await post(http, url, raw_payload("dlr_flat_level1")))[0] == 200
    (message,) = await take(channel, names.unrouted_queue(prefix))
    assert msgspec.json.decode(message.body)["state"] == "sent"


async def test_amqp_adapter_publishes_per_tenant_and_extension(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    exchange = f"{prefix}.pbx"
    bridge = await start_bridge(settings(prefix=prefix, amqp_exchange=exchange))
    queue = await scratch_queue(channel, f"{prefix}.pbx-acme")
    await queue.bind(exchange, routing_key="acme.*")
    await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    messages = await take(channel, queue.name, count=2)
    assert sorted(m.routing_key or "" for m in messages) == ["acme.101", "acme.102"]
    mdr_id = "mdr2-4e5435f325d9431f9e64118b20895b08"
    assert sorted(m.message_id or "" for m in messages) == [f"{mdr_id}:101", f"{mdr_id}:102"]  # the key
    await channel.exchange_delete(exchange)


async def test_amqp_adapter_without_a_bound_pbx_retries_then_dead_letters(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    exchange = f"{prefix}.pbx"
    rules = [InboundRule(config="main", extensions=["101"])]
    bridge = await start_bridge(settings(prefix=prefix, amqp_exchange=exchange, rules=rules))
    await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    (dead,) = await take(channel, names.dead_queue(prefix), timeout=20)
    assert header(dead, names.H_REASON_CODE) == "exhausted"
    assert "did not take acme.101" in header(dead, names.H_REASON)
    await channel.exchange_delete(exchange)


async def test_undecodable_stage_message_is_dead_lettered_not_requeued(
    start_bridge: StartBridge, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    assert bridge.publisher is not None
    await bridge.publisher.to_stage(prefix, "inbound", b'{"kind": "nonsense"}')
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_REASON_CODE) == "undecodable"
    assert "undecodable message" in header(dead, names.H_REASON)
    assert dead.body == b'{"kind": "nonsense"}'


async def test_texts_of_one_conversation_reach_the_pbx_in_order(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    rules = [InboundRule(config="main", extensions=["101"])]
    bridge = await start_bridge(settings(prefix=prefix, pbx_url=pbx.url, rules=rules))
    template = raw_payload("legacy_flat_mdr1")
    for n in range(20):
        body = template.replace(b"Hello there from Flowroute!", f"part {n}".encode()).replace(
            b"mdr1-febb118b9b034338adfc662a8c02fd88", f"mdr1-{n:032d}".encode())
        assert (await post(http, hook_url(bridge.receiver_url), body))[0] == 200
    received = await pbx.wait_for(20)
    assert [d["body"] for d in received] == [f"part {n}" for n in range(20)]
