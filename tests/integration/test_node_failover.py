"""Losing the broker node the bridge is connected to: no webhook refused, consumers move on.

Two loopback proxies in front of the one real RabbitMQ stand for two nodes of a cluster
(`[broker] urls` lists both). `cut` on the first is what a SIGKILLed node looks like to a
client: open connections reset, new ones refused. (The cluster itself, with real nodes and
quorum leader elections, is `make faults`: faults/README.md.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names, topology
from smsbridge.broker.consumer import MessageContext, StageConsumer
from smsbridge.broker.publisher import Publisher
from smsbridge.config import RetryPolicy
from smsbridge.connection import connect, node
from smsbridge.metrics import Metrics
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import text
from tests.support.broker import take
from tests.support.nodes import bridge_on, nodes_of, readiness, timed_post
from tests.support.settings import ACCOUNT
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

CONSUMERS_BACK_S = 2.0 * 3  # the target is 2 s; slack for a host with both cores busy
SLOW_WEBHOOK_S = 1.0


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[TcpProxy, ...]]:
    async with nodes_of(TcpProxy) as proxies:
        yield proxies


async def test_killing_the_connected_node_refuses_no_webhook_and_consumers_move_within_seconds(
    start_bridge: StartBridge, nodes: tuple[TcpProxy, ...], pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    first, second = nodes
    bridge, url = await bridge_on(start_bridge, nodes, prefix=prefix, pbx_url=pbx.url)
    assert bridge.connection is not None and bridge.standby is not None
    assert node(str(bridge.connection.url))[1] == first.port and node(str(bridge.standby.url))[1] == second.port
    answers: list[tuple[int, float]] = []
    ready: list[int] = []

    async def steady(count: int, offset: int) -> None:
        """One webhook every 25 ms (40/s), each a new text, plus a readiness check each."""
        for seq in range(offset, offset + count):
            answers.append(await timed_post(http, url, text(1, seq)))
            ready.append((await readiness(http, bridge))[0])
            await asyncio.sleep(0.025)  # pacing the offered load, not synchronisation

    await steady(20, 0)
    load = asyncio.create_task(steady(100, 20))
    await eventually(lambda: len(answers) >= 30, what="load under way")
    await first.cut()  # the node the consumers and the first route are on dies
    killed_at = time.monotonic()
    await eventually(lambda: bridge.connection is not None and bridge.connection.connected.is_set()
                     and node(str(bridge.connection.url))[1] == second.port,
                     timeout=CONSUMERS_BACK_S, what="the consuming connection back, on the other node")
    print(f"consuming connection back on the other node after {time.monotonic() - killed_at:.2f} s")
    await load
    codes = [code for code, _ in answers]
    slowest = max(seconds for _, seconds in answers)
    print(f"{len(answers)} webhooks: {codes.count(200)} × 200, slowest {slowest * 1000:.0f} ms")
    assert codes == [200] * 120, f"refused: {[c for c in codes if c != 200]}"
    assert set(ready) == {200}, "readiness said not ready while webhooks were taken"
    assert slowest < SLOW_WEBHOOK_S * 3, f"a webhook waited {slowest:.2f} s"
    delivered = await pbx.wait_for(2 * 120, timeout=60)  # extensions 101 and 102 each get every text
    assert len({(d["mdr_id"], d["extension"]) for d in delivered}) == 240


class Held:
    """Handles each job only once `release` is set, as a delivery waits for the PBX's answer;
    records what finished and what was cancelled half-way."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def handle(self, event: Job, context: MessageContext) -> None:
        self.started.append(event.request)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(event.request)
            raise
        self.finished.append(event.request)

    async def given_up(self, event: Job, reason: str, code: str) -> None:
        pass


async def test_work_in_flight_when_the_node_dies_finishes_and_its_redelivery_follows(
    nodes: tuple[TcpProxy, ...], channel: AbstractChannel, prefix: str,
) -> None:
    """aiormq cancels a channel's consumer callbacks when the channel closes: a delivery cut off
    after the PBX took the text, before the ledger knew, reached the PBX again a lease later."""
    first, _ = nodes
    await topology.declare(channel, prefix, delivery_limit=20, accounts=[ACCOUNT])
    connection = await connect([first.url], attempts=3)
    try:
        own = await connection.channel()
        handler = Held()
        stage = StageConsumer(stage="outbound", queue_name=names.stage_queue(prefix, "outbound"), prefix=prefix,
                              decoder=msgspec.json.Decoder(Job), handler=handler,
                              publisher=Publisher(channel, timeout=5), metrics=Metrics(),
                              policy=RetryPolicy(max_attempts=5, base_delay_s=0.05, max_delay_s=0.1))
        await Publisher(channel, timeout=5).to_stage(prefix, "outbound", msgspec.json.encode(Job("r-1")))
        await stage.start(own)
        await eventually(lambda: handler.started == ["r-1"], what="the job started")
        await first.cut()  # the node goes: the consumer's channel closes under the running job
        await eventually(lambda: own.is_closed or not connection.connected.is_set(), what="the channel lost")
        handler.release.set()
        await eventually(lambda: handler.finished[:1] == ["r-1"] or bool(handler.cancelled),
                         what="the job ended one way or the other")
        assert handler.cancelled == [] and handler.finished[:1] == ["r-1"]
    finally:
        await connection.close()
    # Never acked: the broker still has it for the next consumer (which finds it done, in real life).
    [again] = await take(channel, names.stage_queue(prefix, "outbound"))
    assert msgspec.json.decode(again.body, type=Job) == Job("r-1")


class Job(msgspec.Struct, frozen=True):
    request: str
