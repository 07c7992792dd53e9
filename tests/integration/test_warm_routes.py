"""Issue 23: each route's channel is warmed for the inbound queue by one copy of a confirmed
webhook, so that a channel the bridge turns to in a partition is already an enqueuer of that
queue (broker/warmup.py, faults/README.md "Another RabbitMQ"). Loopback proxies in front of the
one real RabbitMQ stand for two nodes (tests/support/nodes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import text
from tests.support.nodes import nodes_of, on_nodes, timed_post, webhook_url
from tests.support.relay import GLOBEX_DID, relay_settings
from tests.support.settings import TOKEN, settings
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

GX_HOOK = f"/webhooks/flowroute/gx/{TOKEN}-gx"


def gx_text(seq: int) -> bytes:
    """A text to tenant globex's DID, for its own webhook."""
    return text(2, seq).replace(b"12065550100", GLOBEX_DID.lstrip("+").encode())


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[TcpProxy, ...]]:
    async with nodes_of(TcpProxy) as proxies:
        yield proxies


async def taken(channel: AbstractChannel, prefix: str) -> list[tuple[str | None, bytes]]:
    """Every message in the inbound queue, taken out of it: (message id, body)."""
    queue = await channel.declare_queue(names.stage_queue(prefix, "inbound"), passive=True)
    out = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        out.append((message.message_id, message.body))
    return out


async def stored(channel: AbstractChannel, prefix: str) -> int:
    """How many messages the inbound queue held; each webhook's copies are the same message."""
    messages = await taken(channel, prefix)
    assert len(set(messages)) == len({m[0] for m in messages}), "copies of one message differ"
    return len(messages)


async def posted(http: aiohttp.ClientSession, url: str, body: bytes, bridge: Bridge) -> int:
    """A webhook, then whatever warm-up it set off has ended."""
    status = (await timed_post(http, url, body))[0]
    warmup = getattr(bridge.publisher, "warmup", None)  # None: a bridge that warms nothing
    if warmup is not None:
        await eventually(warmup.idle, what="warm-up copies ended")
    return status


def copies(bridge: Bridge) -> float:
    return bridge.metrics.registry.get_sample_value(
        "smsbridge_broker_warmup_copies_total", {"route": "standby"}) or 0.0


async def test_each_route_is_warmed_once_per_channel_and_again_after_a_reconnect(
    start_bridge: StartBridge, nodes: tuple[TcpProxy, ...], channel: AbstractChannel, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    bridge = await start_bridge(on_nodes(relay_settings(prefix), [node.url for node in nodes]), ["receiver"])
    hook = webhook_url(bridge)
    assert await posted(http, hook, text(1, 0), bridge) == 200
    assert await stored(channel, prefix) == 2, "the webhook, and one copy on the standby route"
    assert copies(bridge) == 1
    assert await posted(http, hook, text(1, 1), bridge) == 200
    assert await stored(channel, prefix) == 1, "the standby route's channel is warm already"
    # A second tenant's webhook goes to the same queue: nothing to warm.
    assert await posted(http, f"{bridge.receiver_url}{GX_HOOK}", gx_text(0), bridge) == 200
    assert await stored(channel, prefix) == 1 and copies(bridge) == 1, "globex's webhook, no copy"
    # Hostile input is refused before any publish, and warms nothing.
    assert await posted(http, hook, b"{not json", bridge) == 400
    assert await posted(http, hook.replace(TOKEN, "x" * len(TOKEN)), text(3, 0), bridge) == 404
    assert await stored(channel, prefix) == 0 and copies(bridge) == 1

    # The standby node drops its connections; aio-pika reconnects: a new channel, cold again.
    assert bridge.publisher is not None and bridge.standby is not None
    standby = bridge.publisher.routes[1]
    old = await standby.channel.get_underlay_channel()
    await nodes[1].cut()
    # Not `connected` turning false: the standby may be pointed at the other node and back at once.
    await eventually(lambda: old.is_closed, what="the standby's AMQP channel closed")
    await nodes[1].restore()
    await eventually(lambda: standby.connected() and not standby.channel.is_closed, timeout=30,
                     what="the standby route back")
    assert await asyncio.wait_for(standby.channel.get_underlay_channel(), 30) is not old
    assert await posted(http, hook, text(1, 2), bridge) == 200
    assert await stored(channel, prefix) == 2, "the webhook, and one copy on the reconnected channel"
    assert copies(bridge) == 2
    assert await posted(http, hook, text(1, 3), bridge) == 200
    assert await stored(channel, prefix) == 1


async def test_a_renewed_channel_is_warmed_again(
    start_bridge: StartBridge, nodes: tuple[TcpProxy, ...], channel: AbstractChannel, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    bridge = await start_bridge(on_nodes(relay_settings(prefix), [node.url for node in nodes]), ["receiver"])
    hook = webhook_url(bridge)
    assert await posted(http, hook, text(1, 0), bridge) == 200
    assert await stored(channel, prefix) == 2
    assert bridge.publisher is not None and bridge.standby is not None
    standby = bridge.publisher.routes[1]
    old = standby.channel
    assert standby.on_nack is not None
    standby.on_nack(old)  # what a nack on the standby route's channel does (broker/renewal.py)
    await eventually(lambda: standby.channel is not old, what="the standby channel renewed")
    assert await posted(http, hook, text(1, 1), bridge) == 200
    assert await stored(channel, prefix) == 2, "the webhook, and one copy on the standby's fresh channel"
    assert copies(bridge) == 2


async def test_a_bridge_with_one_route_sends_no_copy(
    start_bridge: StartBridge, nodes: tuple[TcpProxy, ...], channel: AbstractChannel, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    bridge = await start_bridge(on_nodes(relay_settings(prefix), [nodes[0].url]), ["receiver"])
    hook = webhook_url(bridge)
    for seq in range(3):
        assert await posted(http, hook, text(1, seq), bridge) == 200
    assert await posted(http, f"{bridge.receiver_url}{GX_HOOK}", gx_text(0), bridge) == 200
    assert await stored(channel, prefix) == 4
    assert copies(bridge) == 0


def inbound_handled(bridge: Bridge) -> float:
    return sum(sample.value for metric in bridge.metrics.processed.collect() for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels.get("stage") == "inbound")


async def test_the_pbx_gets_each_text_once_though_the_standby_route_carried_a_copy(
    start_bridge: StartBridge, nodes: tuple[TcpProxy, ...], pbx: FakePbx, http: aiohttp.ClientSession, prefix: str,
) -> None:
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(on_nodes(base, [node.url for node in nodes]))
    hook = webhook_url(bridge)
    for seq in range(5):
        assert await posted(http, hook, text(1, seq), bridge) == 200
    assert copies(bridge) == 1
    await eventually(lambda: inbound_handled(bridge) >= 6, what="the texts and the copy handled")
    received = await pbx.wait_for(10)  # the DID rings extensions 101 and 102
    pairs = [(str(d["extension"]), str(d["body"])) for d in received]
    assert len(pairs) == len(set(pairs)) == 10 == len(pbx.received), pairs
    for extension in ("101", "102"):  # in order too
        assert [b for e, b in pairs if e == extension] == [f"c1 n{seq}" for seq in range(5)]
