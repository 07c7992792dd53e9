"""The dead-letter tools against the real broker: list, show, filters, replay, purge."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import msgspec
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.config import InboundRule, Settings
from smsbridge.dlq import DeadLetterQueue, Filter, parse_age
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.broker import depth
from tests.support.fixtures import raw_payload
from tests.support.settings import settings, sms_config
from tests.support.wait import eventually

RULES = [InboundRule(config="main", extensions=["101"])]


async def dead_letters(channel: AbstractChannel, settings_: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(channel, settings_, Publisher(channel, timeout=5))


async def wait_depth(channel: AbstractChannel, queue: str, count: int) -> None:
    async def reached() -> bool:
        return await depth(channel, queue) == count

    await eventually(reached, what=f"{count} message(s) in {queue}")


async def test_list_filter_and_replay_after_the_pbx_is_fixed(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel,
    amqp: object,
) -> None:
    config = settings(prefix=prefix, pbx_url=pbx.url, rules=RULES)
    bridge = await start_bridge(config)
    pbx.script([400, 400])
    for name in ("sms_jsonapi_2024", "legacy_flat_mdr1"):
        await post(http, hook_url(bridge.receiver_url), raw_payload(name))
    await post(http, hook_url(bridge.receiver_url), b'{"what": "not flowroute"}')
    await wait_depth(channel, names.dead_queue(prefix), 3)
    confirm_channel = await bridge.connection.channel(publisher_confirms=True)  # type: ignore[union-attr]
    queue = await dead_letters(confirm_channel, config)

    everything, _ = await queue.walk(Filter())
    assert sorted(d.stage for d in everything) == ["delivery", "delivery", "receiver"]
    by_code, _ = await queue.walk(Filter(reason="pbx_400"))
    assert len(by_code) == 2 and all("PBX refused the delivery with 400" in d.reason for d in by_code)
    by_words, _ = await queue.walk(Filter(reason="neither a Flowroute message"))
    assert [d.stage for d in by_words] == ["receiver"]
    assert (await queue.walk(Filter(older_than_s=3600)))[0] == []
    await wait_depth(channel, names.dead_queue(prefix), 3)  # looking removed nothing

    replayed, kept = await queue.walk(Filter(stage="delivery"), act=queue.replay)
    assert len(replayed) == 2 and kept == []
    received = await pbx.wait_for(2)
    assert sorted(d["mdr_id"] for d in received) == ["mdr1-febb118b9b034338adfc662a8c02fd88",
                                                      "mdr2-4e5435f325d9431f9e64118b20895b08"]
    await wait_depth(channel, names.dead_queue(prefix), 1)
    await confirm_channel.close()


async def test_a_parked_webhook_replays_once_its_did_is_configured(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel,
) -> None:
    config = settings(prefix=prefix, pbx_url=pbx.url, rules=RULES)
    bridge = await start_bridge(config)
    body = raw_payload("sms_jsonapi_2024").replace(b'"12065550100"', b'"12065550177"')
    assert (await post(http, hook_url(bridge.receiver_url), body))[1]["status"] == "parked"
    await wait_depth(channel, names.dead_queue(prefix), 1)
    confirm_channel = await bridge.connection.channel(publisher_confirms=True)  # type: ignore[union-attr]
    done, kept = await (await dead_letters(confirm_channel, config)).walk(Filter(stage="receiver"), act=None)
    assert len(done) == 1
    queue = await dead_letters(confirm_channel, config)
    done, kept = await queue.walk(Filter(stage="receiver"), act=queue.replay)
    assert done == [] and len(kept) == 1  # the DID is still not ours: it stays parked
    fixed = msgspec.structs.replace(config, sms_configs=[sms_config(dids=["+12065550100", "+12065550177"])])
    queue = await dead_letters(confirm_channel, fixed)
    done, kept = await queue.walk(Filter(stage="receiver"), act=queue.replay)
    assert len(done) == 1 and kept == []
    # the running bridge routes it with its rules: to extension 101
    (delivery,) = await pbx.wait_for(1)
    assert delivery["to"] == "+12065550177"
    await confirm_channel.close()


async def test_a_poison_message_dead_lettered_by_the_broker_is_listed_with_its_queue(
    start_bridge: StartBridge, prefix: str, channel: AbstractChannel,
) -> None:
    config = settings(prefix=prefix)
    await start_bridge(config)
    stage = names.stage_queue(prefix, "outbound")
    # a consumer that keeps dying (nack + requeue) until the quorum queue's delivery limit
    await channel.default_exchange.publish(__import__("aio_pika").Message(b"{}"), routing_key=f"{prefix}.nowhere")
    probe = await channel.declare_queue(f"{prefix}.poison", durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 1, "x-dead-letter-exchange": names.dead_exchange(prefix)})
    await channel.default_exchange.publish(__import__("aio_pika").Message(b'{"x": 1}', message_id="p-1"),
                                           routing_key=probe.name)
    for _ in range(3):
        message = await probe.get(fail=False, timeout=2)
        if message is not None:
            await message.nack(requeue=True)
    await wait_depth(channel, names.dead_queue(prefix), 1)
    queue = await dead_letters(channel, config)
    (dead,), _ = await queue.walk(Filter(message_id="p-1"))
    assert dead.stage == "poison" and dead.code == "delivery_limit" and dead.reason == "broker: delivery_limit"
    await probe.delete(if_unused=False, if_empty=False)
    assert stage  # the stage queues exist alongside


async def test_purge_by_reason(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel,
) -> None:
    config = settings(prefix=prefix, pbx_url=pbx.url, rules=RULES)
    bridge = await start_bridge(config)
    pbx.script([400])
    await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    await post(http, hook_url(bridge.receiver_url), b'{"what": "not flowroute"}')
    await wait_depth(channel, names.dead_queue(prefix), 2)
    queue = await dead_letters(channel, config)

    async def delete(_: object) -> bool:
        return True

    purged, _ = await queue.walk(Filter(reason="unknown_shape"), act=delete)
    assert len(purged) == 1
    (left,), _ = await queue.walk(Filter())
    assert left.code == "pbx_400"


def test_ages() -> None:
    assert [parse_age(a) for a in ("90s", "15m", "2h", "7d", "1.5h")] == [90, 900, 7200, 604800, 5400]


async def test_cli_purge_refuses_without_yes_when_nobody_can_answer(tmp_path: Path, prefix: str,
                                                                    channel: AbstractChannel) -> None:
    from smsbridge.broker import topology

    await topology.declare(channel, prefix, delivery_limit=20)
    config = tmp_path / "c.toml"
    config.write_text(f'[broker]\nprefix = "{prefix}"\n[ledger]\nurl = "sqlite:///{tmp_path}/l.sqlite3"\n'
                      '[[sms_configs]]\nid = "main"\ntenant = "acme"\naccess_key = { env = "AK" }\n'
                      'secret_key = { env = "AK" }\nwebhook_token = { env = "TOKEN" }\ndids = ["+12065550100"]\n'
                      '[[pbx_targets]]\nkind = "amqp"\ntenant = "acme"\n')
    env = {**os.environ, "AK": "a", "TOKEN": "t" * 30}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smsbridge", "dlq", "purge", "-c", str(config), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"nothing deleted (use --yes" in err
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smsbridge", "dlq", "list", "-c", str(config), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0 and b"0 dead letter(s) matched" in err


async def test_a_dead_letter_survives_a_thousand_listings_under_a_delivery_limit_of_20(
    prefix: str, channel: AbstractChannel,
) -> None:
    # Issue 17 item 8: every `dlq list` put what it read back with a nack-requeue, raising
    # x-delivery-count; under RabbitMQ 4.x's default delivery limit of 20 the 21st listing
    # dropped the very message it showed. The queue is declared here with that limit.
    import aio_pika

    dead = await channel.declare_queue(names.dead_queue(prefix), durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 20})
    await channel.default_exchange.publish(aio_pika.Message(b'{"x": 1}', message_id="d-1", headers={
        names.H_STAGE: "outbound", names.H_REASON: "refused", names.H_REASON_CODE: "pbx_400"}), routing_key=dead.name)
    await channel.default_exchange.publish(aio_pika.Message(b'{"x": 2}', message_id="d-2", headers={
        names.H_STAGE: "delivery", names.H_REASON: "refused", names.H_REASON_CODE: "pbx_404"}), routing_key=dead.name)
    queue = await dead_letters(channel, settings(prefix=prefix))
    try:
        for _ in range(1000):
            listed, _ = await queue.walk(Filter(), limit=1)
            assert [d.message_id for d in listed] == ["d-1"]  # the head stays the head
        shown, _ = await queue.walk(Filter(message_id="d-2"))
        assert [(d.message_id, d.code, d.body) for d in shown] == [("d-2", "pbx_404", b'{"x": 2}')]
        assert await depth(channel, dead.name) == 2
    finally:
        await dead.delete(if_unused=False, if_empty=False)
