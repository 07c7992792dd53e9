"""Readiness while the broker confirms the probe (it needs no queue) but refuses every publish to a
queue: a nacked publish ends its wait at once, so only the route's failures show it.

The channel is a stand-in at the publisher's seam, as in test_publisher_routes.py; the real
broker's side of a stuck route is tests/integration/test_stuck_route.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel

from smsbridge.broker.liveness import BrokerLiveness
from smsbridge.broker.publisher import Basic, Publisher
from smsbridge.errors import BrokerUnavailable
from tests.support.wait import eventually

STALE_S = 1.0


class NacksQueues:
    """Confirms the probe, nacks every publish to a queue until `refusing` is cleared."""

    def __init__(self) -> None:
        self.is_closed = False
        self.refusing = True

    async def get_underlay_channel(self) -> NacksQueues:
        return self

    async def basic_publish(self, body: bytes, *, routing_key: str, **_: Any) -> object:
        await asyncio.sleep(0.005)
        if "liveness-probe" in routing_key or not self.refusing:
            return Basic.Ack()
        raise aiormq.exceptions.DeliveryError(None, Basic.Nack())


async def webhooks(pub: Publisher, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            await pub.publish("x.work", "x.inbound", b"{}", hedge=True, timeout=0.2)
        except BrokerUnavailable:
            pass
        await asyncio.sleep(0.02)


async def test_readiness_is_false_while_every_publish_is_nacked_though_the_probe_is_confirmed() -> None:
    channel = NacksQueues()
    pub = Publisher(cast(AbstractChannel, channel), timeout=0.2, connected=lambda: True)
    live = BrokerLiveness(pub, "x", interval_s=0.05, stale_after_s=STALE_S)
    pub.gate = live.responsive
    prober = asyncio.create_task(live.run())
    try:
        await webhooks(pub, STALE_S / 2)
        assert live.committing()  # not yet: an election's nacks last less than the stale window
        await webhooks(pub, STALE_S)
        assert live.responsive() and not live.committing()  # the probe passes, nothing is stored
        channel.refusing = False
        await pub.publish("x.work", "x.inbound", b"{}")
        assert live.committing()  # one confirmed publish: committing again
    finally:
        prober.cancel()


async def test_refusals_long_past_do_not_keep_readiness_false() -> None:
    channel = NacksQueues()
    pub = Publisher(cast(AbstractChannel, channel), timeout=0.2, connected=lambda: True)
    live = BrokerLiveness(pub, "x", interval_s=0.05, stale_after_s=STALE_S)
    prober = asyncio.create_task(live.run())
    try:
        await webhooks(pub, STALE_S * 1.5)
        assert not live.committing()
        await eventually(live.committing, timeout=STALE_S * 3, what="readiness after the refusals' window")
    finally:
        prober.cancel()
