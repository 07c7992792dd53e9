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

from smsbridge.bridge import Bridge
from smsbridge.connection import node
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import text
from tests.support.settings import TOKEN, settings
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

CONSUMERS_BACK_S = 2.0 * 3  # the target is 2 s; slack for a host with both cores busy
SLOW_WEBHOOK_S = 1.0


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[TcpProxy, TcpProxy]]:
    first, second = TcpProxy("127.0.0.1", 5672), TcpProxy("127.0.0.1", 5672)
    await first.start()
    await second.start()
    yield first, second
    for proxy in (first, second):
        proxy.heal()
        await proxy.cut()


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, float]:
    started = time.monotonic()
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, time.monotonic() - started


async def ready(http: aiohttp.ClientSession, bridge: Bridge) -> int:
    async with http.get(f"{bridge.receiver_url}/readyz") as response:
        return response.status


async def test_killing_the_connected_node_refuses_no_webhook_and_consumers_move_within_seconds(
    start_bridge: StartBridge, nodes: tuple[TcpProxy, TcpProxy], pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    first, second = nodes
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(msgspec.structs.replace(base, broker=msgspec.structs.replace(
        base.broker, urls=[first.url, second.url], publish_timeout_s=5.0)))
    assert bridge.connection is not None and bridge.standby is not None
    assert node(str(bridge.connection.url))[1] == first.port and node(str(bridge.standby.url))[1] == second.port
    url = f"{bridge.receiver_url}/webhooks/flowroute/main/{TOKEN}"
    answers: list[tuple[int, float]] = []
    readiness: list[int] = []

    async def steady(count: int, offset: int) -> None:
        """One webhook every 25 ms (40/s), each a new text, plus a readiness check each."""
        for seq in range(offset, offset + count):
            answers.append(await post(http, url, text(1, seq)))
            readiness.append(await ready(http, bridge))
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
    assert set(readiness) == {200}, "readiness said not ready while webhooks were taken"
    assert slowest < SLOW_WEBHOOK_S * 3, f"a webhook waited {slowest:.2f} s"
    delivered = await pbx.wait_for(2 * 120, timeout=60)  # extensions 101 and 102 each get every text
    assert len({(d["mdr_id"], d["extension"]) for d in delivered}) == 240
