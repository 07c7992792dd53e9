"""Inbound texts reach each extension in arrival order, per conversation, across retries and
across several delivery processes (the ledger holds the order: `ledger/order.py`)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.config import InboundRule, LedgerSettings, RetryPolicy, Settings
from smsbridge.events import InboundDelivery
from smsbridge.sandbox.pbx import FakePbx
from smsbridge.workers.turns import OrderSweeper, Turns
from tests.conftest import StartBridge
from tests.support.broker import header, take
from tests.support.fixtures import raw_payload
from tests.support.ledger import BACKENDS, ledger_location
from tests.support.settings import DID_MAIN, TOKEN, settings
from tests.support.wait import eventually

StartRoles = Callable[[Settings, tuple[str, ...]], Awaitable[Bridge]]
# Patient enough to outlast the PBX outage: order must hold through many retries.
PATIENT = RetryPolicy(max_attempts=200, base_delay_s=0.2, max_delay_s=1.0, max_age_s=300)


@pytest.fixture
def start_roles(start_bridge: StartBridge) -> StartRoles:
    """Bridges running some roles each, like separate processes."""
    return start_bridge


def text(sender: int, seq: int) -> bytes:
    """A Flowroute webhook: conversation `sender` (its own number), the `seq`-th text of it."""
    return (raw_payload("legacy_flat_mdr1")
            .replace(b"Hello there from Flowroute!", f"c{sender} n{seq}".encode())
            .replace(b"18555550168", f"1206555{sender:04d}".encode())
            .replace(b"mdr1-febb118b9b034338adfc662a8c02fd88", f"mdr1-{sender:04d}{seq:028d}".encode()))


async def post_in_order(http: aiohttp.ClientSession, url: str, sender: int, count: int, gap_s: float) -> None:
    """One customer texting: each text sent once the previous one was answered 200."""
    for seq in range(count):
        async with http.post(url, data=text(sender, seq), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
        await asyncio.sleep(gap_s)  # pacing the offered load, not synchronisation


def out_of_order(received: list[dict[str, Any]]) -> int:
    """Texts that reached an extension after a later text of the same conversation."""
    last: dict[tuple[str, str], int] = defaultdict(lambda: -1)
    late = 0
    for delivery in received:
        key = (delivery["from"], delivery["extension"])
        seq = int(delivery["body"].split(" n")[1])
        late += seq < last[key]
        last[key] = max(last[key], seq)
    return late


@pytest.mark.parametrize("backend", BACKENDS)
async def test_pbx_down_then_back_every_text_arrives_in_order_per_conversation_and_extension(
    backend: str, start_roles: StartRoles, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str,
    tmp_path: Path,
) -> None:
    """10 conversations to a ring group of two extensions (20 ordered streams), 12 texts each,
    offered while the PBX answers 503; one receiver and inbound process, two delivery processes."""
    conversations, per_conversation = 10, 12
    async with ledger_location(backend, tmp_path) as (url, schema):
        base = settings(prefix=prefix, pbx_url=pbx.url, ledger=LedgerSettings(url=url, schema=schema))
        config = msgspec.structs.replace(base, retry=msgspec.structs.replace(base.retry, delivery=PATIENT))
        front = await start_roles(config, ("receiver", "inbound"))
        workers = [await start_roles(config, ("delivery",)) for _ in range(2)]
        pbx.down_with = 503
        hook = f"{front.receiver_url}/webhooks/flowroute/main/{TOKEN}"
        await asyncio.gather(*(post_in_order(http, hook, sender, per_conversation, 0.2)
                               for sender in range(conversations)))
        await eventually(lambda: len(pbx.attempts) >= 100, timeout=60, what="100 refused attempts")
        assert not pbx.received
        pbx.down_with = None
        received = await pbx.wait_for(2 * conversations * per_conversation, timeout=120)
        for bridge in (*workers, front):  # before the ledger's schema goes (the fixture's stop is then a no-op)
            await bridge.stop()
    late = out_of_order(received)
    print(f"{len(received)} deliveries after {len(pbx.attempts) - len(received)} refused attempts, "
          f"{late} out of order")
    assert late == 0
    assert sorted((d["mdr_id"], d["extension"]) for d in received) == sorted(
        (f"mdr1-{s:04d}{n:028d}", ext) for s in range(conversations) for n in range(per_conversation)
        for ext in ("101", "102"))


async def test_a_dead_lettered_text_lets_the_next_of_its_conversation_go(
    start_roles: StartRoles, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    """The first text gets a final 400 from the PBX and is dead-lettered; the two after it, held
    back meanwhile, then go in order instead of waiting for it."""
    rules = [InboundRule(config="main", did=DID_MAIN, extensions=["101"])]
    front = await start_roles(settings(prefix=prefix, pbx_url=pbx.url, rules=rules),
                              ("receiver", "inbound", "delivery"))
    pbx.script([400])
    await post_in_order(http, f"{front.receiver_url}/webhooks/flowroute/main/{TOKEN}", 7, 3, 0.0)
    received = await pbx.wait_for(2, timeout=30)
    assert [d["body"] for d in received] == ["c7 n1", "c7 n2"]
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_REASON_CODE) == "pbx_400" and b"c7 n0" in dead.body


async def test_a_conversation_whose_head_never_reached_rabbitmq_is_released_by_the_sweep(
    start_roles: StartRoles, pbx: FakePbx, prefix: str
) -> None:
    """A head the ledger made `live` whose publish was lost (a crash between the two): nothing
    would ever deliver it or its successors. The sweep republishes it and releases the rest."""
    bridge = await start_roles(settings(prefix=prefix, pbx_url=pbx.url), ("delivery",))
    assert bridge.ledger is not None and bridge.publisher is not None
    texts = [InboundDelivery(tenant="acme", config_id="main", mdr_id=f"mdr2-lost-{n}", from_="+12065550199",
                             to=DID_MAIN, extension="101", body=f"c0 n{n}", received_at=datetime.now(UTC))
             for n in range(3)]
    assert len(await bridge.ledger.enqueue_deliveries(texts)) == 1  # due, and "lost": never published
    sweeper = OrderSweeper(bridge.ledger, Turns(bridge.publisher, prefix), stale=timedelta(0))
    assert await sweeper.sweep() == 1
    received = await pbx.wait_for(3, timeout=30)
    assert sorted(d["body"] for d in received) == ["c0 n0", "c0 n1", "c0 n2"]
