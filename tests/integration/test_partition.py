"""A silent broker partition (packets dropped, no reset), through a loopback proxy in front of
the real RabbitMQ: readiness must say so within seconds, and webhooks must get their 503 at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from smsbridge.bridge import Bridge
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.support.fixtures import raw_payload
from tests.support.nodes import on_nodes, readiness, running, timed_post, webhook_url
from tests.support.settings import settings
from tests.support.tcpproxy import TcpProxy

READY_WITHIN_S = 6.0  # liveness: 3 s without a confirmed round trip, plus slack for a busy machine
FAST_503_S = 1.0  # a webhook during the partition: its 503 without waiting for a confirm timeout


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with running(TcpProxy("127.0.0.1", 5672)) as (node,):
        yield node


async def wait_for_readiness(http: aiohttp.ClientSession, bridge: Bridge, status: int, timeout: float) -> float:
    """Seconds until /readyz answers `status`; fails after `timeout`."""
    started = time.monotonic()
    while (await readiness(http, bridge))[0] != status:
        assert time.monotonic() - started < timeout, f"/readyz not {status} after {timeout} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_silent_partition_turns_readyz_503_within_seconds_and_webhooks_fail_fast(
    start_bridge: StartBridge, proxy: TcpProxy, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(on_nodes(base, [proxy.url]))
    url, raw = webhook_url(bridge), raw_payload("legacy_flat_mdr1")
    assert (await readiness(http, bridge))[0] == 200

    proxy.blackhole()
    took = await wait_for_readiness(http, bridge, 503, timeout=READY_WITHIN_S)
    status, checks = await readiness(http, bridge)
    assert status == 503 and checks["broker_answering"] is False, checks
    print(f"readyz 503 after {took:.2f} s of silent partition")
    answers = await asyncio.gather(*(timed_post(http, url, raw) for _ in range(20)))
    assert {code for code, _ in answers} == {503}
    slowest = max(seconds for _, seconds in answers)
    assert slowest < FAST_503_S, f"a webhook waited {slowest:.2f} s for its 503"
    print(f"20 webhooks during the partition: 503 each, slowest {slowest * 1000:.0f} ms")

    proxy.heal()  # the connection resumes, or heartbeats dropped it and it reconnects
    await wait_for_readiness(http, bridge, 200, timeout=60)
    assert (await timed_post(http, url, raw))[0] == 200
    delivered = await pbx.wait_for(2, timeout=30)
    assert {d["mdr_id"] for d in delivered} == {"mdr1-febb118b9b034338adfc662a8c02fd88"}


async def test_a_partition_longer_than_the_heartbeat_drops_the_connection_and_it_comes_back(
    start_bridge: StartBridge, proxy: TcpProxy, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    """Heartbeats end the dead connection (here every 2 s, from the URL: dropped after 9 s of
    silence); the reconnect attempt made while the partition lasts succeeds after it."""
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(on_nodes(base, [f"{proxy.url}?heartbeat=2"]))
    url, raw = webhook_url(bridge), raw_payload("legacy_flat_mdr1")
    proxy.blackhole()
    started = time.monotonic()
    while (await readiness(http, bridge))[1]["broker_connected"]:
        assert time.monotonic() - started < 40, "heartbeats never dropped the silent connection"
        await asyncio.sleep(0.2)
    print(f"connection dropped by heartbeats after {time.monotonic() - started:.1f} s")
    proxy.heal()
    await wait_for_readiness(http, bridge, 200, timeout=60)
    assert (await timed_post(http, url, raw))[0] == 200
    assert len(await pbx.wait_for(2, timeout=30)) == 2
