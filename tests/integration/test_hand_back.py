"""Texts the broker had sent the inbound stage's lost connection still reach the PBX first.

`make faults` (020938d, faults/README.md "Texts in flight to a consumer on the cut-off node"):
the inbound stage's node was cut off from the inbound queue's leader and paused itself; the
stage came back on another node within 0.4 s and was given later webhooks, while the ones the
leader had sent over the cut link came back only when the leader declared the node down:
31 texts out of order. Here `PausingProxy` plays that node in front of the real RabbitMQ (a
second proxy, the other node), and the test plays the leader's notice. `broker/handback.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.connection import node
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import out_of_order, text
from tests.support.nodes import on_nodes, running, webhook_url
from tests.support.pausing_proxy import PausingProxy
from tests.support.settings import settings
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

HOLD_S = 8.0  # long enough for the test's steps before the notice, on a busy host too
LATER = 6  # texts posted after the stage came back, before the old node is declared down
EXTENSIONS = 2  # the tests' settings ring extensions 101 and 102


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[PausingProxy, TcpProxy]]:
    async with running(PausingProxy("127.0.0.1", 5672), TcpProxy("127.0.0.1", 5672)) as (paused, other):
        assert isinstance(paused, PausingProxy)
        yield paused, other


async def watch(pbx: FakePbx, arrived: dict[str, float]) -> None:
    """When each text first reached the PBX (looked at every 20 ms)."""
    while True:
        for delivery in pbx.received:
            arrived.setdefault(delivery["body"], time.monotonic())
        await asyncio.sleep(0.02)


def handled(bridge: Bridge, stage: str) -> float:
    return bridge.metrics.registry.get_sample_value(
        "smsbridge_messages_total", {"stage": stage, "outcome": "done"}) or 0.0


async def workers_on(start_bridge: StartBridge, nodes: tuple[TcpProxy, TcpProxy], prefix: str, pbx: FakePbx,
                     hold_s: float) -> tuple[Bridge, str]:
    """A receiver on the second node alone (its publishes are not what is tested), and the
    inbound and delivery stages connected to the first node, the second as their other one."""
    paused, other = nodes
    base = settings(prefix=prefix, pbx_url=pbx.url)
    receiver = await start_bridge(on_nodes(base, [other.url]), ("receiver",))
    workers = on_nodes(base, [paused.url, other.url])
    workers = msgspec.structs.replace(workers, broker=msgspec.structs.replace(workers.broker, hand_back_hold_s=hold_s))
    bridge = await start_bridge(workers, ("inbound", "delivery"))
    assert bridge.connection is not None and node(str(bridge.connection.url))[1] == paused.port
    return bridge, webhook_url(receiver)


async def test_texts_sent_to_a_paused_node_reach_the_pbx_before_later_ones(
    start_bridge: StartBridge, nodes: tuple[PausingProxy, TcpProxy], pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    paused, other = nodes
    bridge, url = await workers_on(start_bridge, nodes, prefix, pbx, HOLD_S)
    posted = 0

    async def post() -> None:
        nonlocal posted
        async with http.post(url, data=text(1, posted), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
        posted += 1

    arrived: dict[str, float] = {}
    watching = asyncio.create_task(watch(pbx, arrived))
    for _ in range(3):
        await post()
    await pbx.wait_for(3 * EXTENSIONS, timeout=30)
    restored = asyncio.Event()
    assert bridge.connection is not None
    bridge.connection.reconnect_callbacks.add(lambda *_args, **_kw: restored.set())
    paused.pause_on_deliver(names.stage_queue(prefix, "inbound"))
    await post()  # its delivery to the stage is dropped: the node pauses
    await asyncio.wait_for(restored.wait(), timeout=15)  # every channel and consumer back
    assert node(str(bridge.connection.url))[1] == other.port
    back_at = time.monotonic()
    before = handled(bridge, "inbound")
    for _ in range(LATER):
        await post()
    # Some routed (recorded, published) by the stage before the broker hands the lost ones back;
    # the broker also goes on giving the lost consumer its share of them, as a leader does
    # until it declares the cut-off node down.
    await eventually(lambda: handled(bridge, "inbound") >= before + 2, timeout=30, what="later texts routed")
    routed_at = time.monotonic()
    assert routed_at < back_at + HOLD_S - 1, "too slow to tell: the hold ended before the notice"
    await paused.notice()
    received = await pbx.wait_for(posted * EXTENSIONS, timeout=60)
    await eventually(lambda: len(arrived) == posted, what="arrivals noted")
    watching.cancel()
    first_later = min(arrived[f"c1 n{n}"] for n in range(4, posted))
    print(f"later texts routed {routed_at - back_at:.2f} s after the stage was back; the first of them "
          f"reached the PBX {first_later - back_at:.2f} s after, the lost one {arrived['c1 n3'] - back_at:.2f} s")
    assert out_of_order(received) == 0, [d["body"] for d in received]
    assert {d["body"] for d in received} == {f"c1 n{n}" for n in range(posted)}
    assert len({(d["body"], d["extension"]) for d in received}) == posted * EXTENSIONS
    # Held for the hold, counted from the reconnection (or a little before it).
    assert first_later >= back_at + HOLD_S - 0.5


async def test_a_node_whose_process_died_holds_nothing_back(
    start_bridge: StartBridge, nodes: tuple[PausingProxy, TcpProxy], pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    """A reset connection (the node's process killed): its peers saw it go too, nothing can come
    back late, and texts after the reconnection are delivered at once."""
    paused, other = nodes
    long_hold_s = 60.0
    bridge, url = await workers_on(start_bridge, nodes, prefix, pbx, long_hold_s)
    await paused.cut()  # resets every connection, as a dead node's operating system does
    await eventually(lambda: bridge.connection is not None and bridge.connection.connected.is_set()
                     and node(str(bridge.connection.url))[1] == other.port, timeout=15,
                     what="the stage back, on the other node")
    back_at = time.monotonic()
    for seq in range(3):
        async with http.post(url, data=text(2, seq), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
    received = await pbx.wait_for(3 * EXTENSIONS, timeout=long_hold_s / 2)
    assert out_of_order(received) == 0
    print(f"delivered {time.monotonic() - back_at:.2f} s after the stage was back")
