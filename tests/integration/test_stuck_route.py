"""A route that stops confirming without failing (issue 23's partition): publishes go through the
other route within a fraction of a second, readiness says what is true, nothing is lost, and the
late confirms (and the first copies they confirm) change nothing.

Two loopback proxies in front of the one real RabbitMQ stand for two nodes. The first either
withholds the confirms of every publish but the liveness probe's (`ConfirmHoldingProxy`: a node
cut off from its peers, which confirms what needs no queue but cannot commit to its quorum
queues; the publishes themselves are stored, so their late confirms come with real second
copies) or lets nothing through at all (`TcpProxy.blackhole`: a silent network partition).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from smsbridge.broker.liveness import probe_key
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_delivery_order import text
from tests.support.confirm_proxy import ConfirmHoldingProxy
from tests.support.nodes import bridge_on, on_nodes, readiness, running, timed_post, webhook_url
from tests.support.settings import settings
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

PASSED_BY_S = 2.0  # a webhook while its route is stuck: hedged after 0.5 s; slack for a busy host
READY_WITHIN_S = 6.0  # liveness: 3 s without a confirm of a waiting publish, plus slack
CONVERSATIONS, TEXTS = 4, 5


@pytest.fixture
async def first() -> AsyncIterator[ConfirmHoldingProxy]:
    async with running(ConfirmHoldingProxy("127.0.0.1", 5672)) as (proxy,):
        yield proxy


@pytest.fixture
async def second() -> AsyncIterator[TcpProxy]:
    async with running(TcpProxy("127.0.0.1", 5672)) as (proxy,):
        yield proxy


def out_of_order(delivered: list[dict[str, object]]) -> int:
    """Texts that reached an extension after a later text of their conversation."""
    last: dict[tuple[object, object], int] = {}
    late = 0
    for d in delivered:
        key, seq = (d["from"], d["extension"]), int(str(d["body"]).split(" n")[1])
        late += seq < last.get(key, -1)
        last[key] = max(last.get(key, -1), seq)
    return late


@pytest.mark.parametrize("stuck", ["confirms withheld", "blackhole"])
async def test_a_route_that_stops_confirming_is_passed_by_within_seconds_and_late_confirms_change_nothing(
    start_bridge: StartBridge, first: ConfirmHoldingProxy, second: TcpProxy, pbx: FakePbx,
    http: aiohttp.ClientSession, prefix: str, stuck: str,
) -> None:
    bridge, url = await bridge_on(start_bridge, [first, second], prefix=prefix, pbx_url=pbx.url)
    assert bridge.publisher is not None
    primary = bridge.publisher.routes[0]
    assert (await timed_post(http, url, text(0, 0)))[0] == 200
    await pbx.wait_for(2, timeout=30)

    if stuck == "blackhole":
        first.blackhole()  # the consumers, on the same connection, stop too
    else:
        first.hold(lambda key: key != probe_key(prefix))  # the probe is still confirmed at once
    answers: list[tuple[int, float]] = []
    ready: list[int] = []

    async def conversation(sender: int) -> None:  # a customer texting: each text once the last got its 200
        for seq in range(TEXTS):
            answers.append(await timed_post(http, url, text(sender, seq)))
            ready.append((await readiness(http, bridge))[0])

    await asyncio.gather(*(conversation(c) for c in range(1, CONVERSATIONS + 1)))
    slowest = max(seconds for _, seconds in answers)
    print(f"{stuck}: {len(answers)} webhooks, slowest {slowest * 1000:.0f} ms")
    assert [code for code, _ in answers] == [200] * CONVERSATIONS * TEXTS
    assert slowest < PASSED_BY_S, f"a webhook waited {slowest:.2f} s on the stuck route"
    assert set(ready) == {200}, "readiness said not ready while the other route took every webhook"
    assert primary.set_aside_until > time.monotonic(), "the stuck route is still tried first"

    if stuck == "blackhole":
        first.heal()  # what was held goes through: the first copies are stored, their confirms come late
    else:
        assert first.held > 0
        await first.release()
    # After the heal each conversation's last text: the delivery stages take a conversation's texts
    # in queue order, so once it is delivered every earlier copy (late ones included) was handled.
    for sender in range(1, CONVERSATIONS + 1):
        assert (await timed_post(http, url, text(sender, TEXTS)))[0] == 200
    expected = 2 * (1 + CONVERSATIONS * (TEXTS + 1))  # extensions 101 and 102 each get every text
    delivered = await pbx.wait_for(expected, timeout=60)
    await eventually(lambda: all(any(d["body"] == f"c{s} n{TEXTS}" and d["extension"] == ext for d in pbx.received)
                                 for s in range(1, CONVERSATIONS + 1) for ext in ("101", "102")),
                     timeout=60, what="every conversation's last text at both extensions")
    delivered = list(pbx.received)
    twice = [key for key, n in Counter((d["mdr_id"], d["extension"]) for d in delivered).items() if n > 1]
    assert len(delivered) == expected and not twice, f"delivered twice: {twice}"
    assert out_of_order(delivered) == 0


async def test_readiness_turns_false_when_publishes_stop_being_confirmed_though_the_probe_still_is(
    start_bridge: StartBridge, first: ConfirmHoldingProxy, pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    """One node, cut off from its peers: the probe, which needs no queue, is confirmed at once,
    the webhooks' publishes never. Readiness must not believe the probe."""
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(on_nodes(base, [first.url], publish_timeout_s=10.0))
    url = webhook_url(bridge)
    assert (await readiness(http, bridge))[0] == 200

    first.hold(lambda key: key != probe_key(prefix))
    waiting = asyncio.create_task(timed_post(http, url, text(1, 0)))
    started = time.monotonic()
    while (await readiness(http, bridge))[0] != 503:
        assert time.monotonic() - started < READY_WITHIN_S, "readiness still true while nothing is confirmed"
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    status, checks = await readiness(http, bridge)
    assert status == 503 and checks["broker_answering"] is False and checks["broker_connected"] is True, checks
    assert bridge.publisher is not None and bridge.publisher.routes[0].fresh(3.0), "the probe should still pass"
    assert not waiting.done()
    print(f"readyz 503 after {took:.2f} s of unconfirmed publishes, the probe confirmed throughout")

    await first.release()  # the late confirm completes the waiting webhook
    assert (await waiting)[0] == 200
    started = time.monotonic()
    while (await readiness(http, bridge))[0] != 200:
        assert time.monotonic() - started < READY_WITHIN_S, "readiness not back once confirms came"
        await asyncio.sleep(0.1)
    assert (await timed_post(http, url, text(1, 1)))[0] == 200
    assert len(await pbx.wait_for(4, timeout=30)) == 4
