"""One queue stops committing while the others go on confirming through the same routes: issue
23's partition in its hard case, the inbound queue's leader on the node cut off from its cluster
(faults/README.md). Webhooks wait for a confirm that does not come, through either node, while a
second tenant's send through the relay API (the outbound queue) is confirmed at once, so every
route looks busy rather than stuck. Readiness must still go false within about 3 s, and true
again once the webhooks' publishes are confirmed.

`ConfirmHoldingProxy` in front of the one real RabbitMQ stands for each node: it withholds the
confirms of the inbound queue's publishes only (they are stored; their confirms come late, on
`release`) and passes every other confirm, the liveness probe's included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import text
from tests.support.confirm_proxy import ConfirmHoldingProxy
from tests.support.nodes import nodes_of, on_nodes, readiness, timed_post, webhook_url
from tests.support.relay import GLOBEX, GLOBEX_DID, relay_queue, relay_settings
from tests.support.settings import TOKEN

__all__ = ["relay_queue"]  # the fixture, used by name
READY_WITHIN_S = 6.0  # 3 s without a confirm of a waiting webhook, plus slack for a loaded host
STALE_S = 3.0


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[ConfirmHoldingProxy, ...]]:
    async with nodes_of(ConfirmHoldingProxy) as proxies:
        yield proxies


async def webhook(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    return (await timed_post(http, url, body))[0]


async def globex_send(http: aiohttp.ClientSession, bridge: Bridge) -> int:
    """Tenant globex's PBX sends through the relay API: 202 once the outbound queue has it."""
    body = msgspec.json.encode({"to": "2065550199", "from": GLOBEX_DID, "body": "table ready"})
    auth = {"Authorization": aiohttp.encode_basic_auth(*GLOBEX)}
    async with http.post(f"{bridge.receiver_url}/flowroute/v2.2/messages", data=body, headers=auth) as response:
        return response.status


def routes_answer(bridge: Bridge) -> bool:
    """What readiness looked at before: some route fresh, not lagging, not refusing."""
    assert bridge.publisher is not None
    now = time.monotonic()
    return any(r.fresh(STALE_S) and not r.lagging(STALE_S, now) and not r.refusing(STALE_S, now)
               for r in bridge.publisher.routes)


@pytest.mark.parametrize("listed", [1, 2])
async def test_readiness_turns_false_while_the_inbound_queue_confirms_nothing_though_another_queue_does(
    start_bridge: StartBridge, nodes: tuple[ConfirmHoldingProxy, ...], relay_queue: str, http: aiohttp.ClientSession,
    prefix: str, listed: int,
) -> None:
    base = relay_settings(prefix)
    bridge = await start_bridge(on_nodes(base, [node.url for node in nodes[:listed]], publish_timeout_s=15.0),
                                ["receiver"])
    hook = webhook_url(bridge)
    assert await webhook(http, hook, text(1, 0)) == 200
    assert (await readiness(http, bridge))[0] == 200

    inbound = names.stage_queue(prefix, "inbound")
    for node in nodes:
        node.hold(lambda key: key == inbound)
    waiting = asyncio.create_task(webhook(http, hook, text(1, 1)))
    started = time.monotonic()
    sends = 0
    while (await readiness(http, bridge))[0] != 503:
        took = time.monotonic() - started
        assert took < READY_WITHIN_S, f"readiness still true {took:.1f} s into the inbound queue's stall"
        assert await globex_send(http, bridge) == 202, "another queue's publish should be confirmed"
        sends += 1
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    status, checks = await readiness(http, bridge)
    assert status == 503 and checks["broker_answering"] is False and checks["broker_connected"] is True, checks
    assert sends > 0 and routes_answer(bridge), "the routes should look answering: other queues confirm"
    assert await globex_send(http, bridge) == 202  # the relay API still takes sends
    assert not waiting.done()
    # Hostile input meanwhile is answered at once, and changes nothing.
    assert await webhook(http, hook, b"{not json") == 400
    assert await webhook(http, hook.replace(TOKEN, "x" * len(TOKEN)), text(9, 0)) == 404
    assert (await readiness(http, bridge))[0] == 503
    print(f"{listed} node(s): readyz 503 after {took:.2f} s of unconfirmed webhooks, {sends} sends confirmed meanwhile")

    for node in nodes:
        await node.release()  # the late confirms complete the waiting webhook
    assert await waiting == 200
    started = time.monotonic()
    while (await readiness(http, bridge))[0] != 200:
        assert time.monotonic() - started < READY_WITHIN_S, "readiness not back once the webhooks were confirmed"
        await asyncio.sleep(0.1)
    assert await webhook(http, hook, text(1, 2)) == 200
