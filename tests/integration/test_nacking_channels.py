"""Channels the broker nacks for good: what RabbitMQ 3.10 leaves after a node dies.

A channel whose first publish to a quorum queue came while that queue's leader on record was
the dead node nacks every later publish there until the node is back (broker/renewal.py). In
`make faults` that was 15-20 s without a text reaching the PBX. `NackingProxy.stick()` makes
the real broker's confirms on every open channel arrive as nacks, as then, while channels
opened later work: the bridge must go on taking and delivering texts within about a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.broker import topology
from smsbridge.broker.publisher import Publisher
from smsbridge.broker.renewal import Renewal
from smsbridge.connection import connect
from smsbridge.errors import BrokerUnavailable
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import text
from tests.support.nacking_proxy import NackingProxy
from tests.support.nodes import bridge_on, nodes_of, timed_post
from tests.support.settings import ACCOUNT
from tests.support.wait import eventually

WEBHOOK_S = 2.0  # the target is well under a second; slack for a host with both cores busy


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[NackingProxy, ...]]:
    async with nodes_of(NackingProxy) as proxies:
        yield proxies


async def test_texts_go_on_when_every_channel_the_bridge_publishes_on_is_nacked(
    start_bridge: StartBridge, nodes: tuple[NackingProxy, ...], pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    first, second = nodes
    _, url = await bridge_on(start_bridge, nodes, prefix=prefix, pbx_url=pbx.url)
    assert (await timed_post(http, url, text(1, 0)))[0] == 200
    await pbx.wait_for(2, timeout=30)  # extensions 101 and 102
    stuck = first.stick() + second.stick()  # the receiver's, the inbound and delivery stages' channels
    assert stuck >= 4
    answers = [await timed_post(http, url, text(1, seq)) for seq in range(1, 6)]
    assert [code for code, _ in answers] == [200] * 5
    slowest = max(seconds for _, seconds in answers)
    print(f"5 webhooks after the channels stuck: slowest {slowest * 1000:.0f} ms; "
          f"{first.nacked + second.nacked} publishes nacked")
    assert slowest < WEBHOOK_S, f"a webhook waited {slowest:.2f} s"
    assert first.nacked + second.nacked >= 1, "no publish went through a stuck channel: the test proves nothing"
    delivered = await pbx.wait_for(2 * 6, timeout=15)
    assert len({(d["mdr_id"], d["extension"]) for d in delivered}) == 12


async def test_a_nacked_route_gets_a_fresh_channel_at_most_once_per_interval_and_the_old_one_closes(
    nodes: tuple[NackingProxy, ...], channel: AbstractChannel, prefix: str,
) -> None:
    first, _ = nodes
    await topology.declare(channel, prefix, delivery_limit=20, accounts=[ACCOUNT])
    connection = await connect([first.url], attempts=3)
    try:
        own = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(own, timeout=0.5)
        opened: list[AbstractChannel] = []

        async def fresh() -> AbstractChannel:
            opened.append(await connection.channel(publisher_confirms=True, on_return_raises=True))
            return opened[-1]

        renewal = Renewal(publisher.routes[0], fresh, grace_s=0.2, every_s=60.0)
        body = b'{"n": 1}'
        await publisher.to_stage(prefix, "outbound", body)
        first.stick()
        with pytest.raises(BrokerUnavailable):  # one route: the nack is the caller's to retry
            await publisher.to_stage(prefix, "outbound", body)
        await eventually(lambda: renewal.renewed == 1, what="a fresh channel for the route")
        assert publisher.routes[0].channel is opened[0]
        await publisher.to_stage(prefix, "outbound", body)  # the retry goes through the fresh channel
        await eventually(lambda: own.is_closed, what="the replaced channel closed after its grace")
        first.stick()  # the fresh one goes the same way: within `every_s` there is no second renewal
        with pytest.raises(BrokerUnavailable):
            await publisher.to_stage(prefix, "outbound", body)
        assert renewal.renewed == 1 and len(opened) == 1
        await renewal.close()
    finally:
        await connection.close()
