"""When a nacked route gets a fresh channel (broker/renewal.py): only for a nack on its current
channel, one renewal at a time, and less and less often while the nacks go on.

The channels are stand-ins at the publisher's seam; the real broker's side is
tests/integration/test_nacking_channels.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel

from smsbridge.broker.publisher import Basic, Publisher
from smsbridge.broker.renewal import Renewal
from smsbridge.errors import BrokerUnavailable
from tests.support.wait import eventually


class Nacking:
    """A queue at its length limit with overflow=reject-publish: every publish nacked, on any channel."""

    opened: list[Nacking] = []

    def __init__(self, delay_s: float = 0.0) -> None:
        self.is_closed = False
        self.delay_s = delay_s
        Nacking.opened.append(self)

    async def get_underlay_channel(self) -> Nacking:
        return self

    async def basic_publish(self, body: bytes, **_: Any) -> object:
        await asyncio.sleep(self.delay_s)
        raise aiormq.exceptions.DeliveryError(None, Basic.Nack())

    async def close(self) -> None:
        self.is_closed = True


async def refused(pub: Publisher, timeout: float = 0.3) -> None:
    try:
        await pub.publish("x.work", "x.inbound", b"{}", timeout=timeout)
    except BrokerUnavailable:
        return
    raise AssertionError("a nacked publish was taken")


async def test_a_persistent_nack_storm_opens_channels_less_and_less_often() -> None:
    """Review finding 7: before, a channel every 0.5 s for as long as the nacks lasted (20 in 10 s)."""
    Nacking.opened = []
    pub = Publisher(cast(AbstractChannel, Nacking(0.01)), timeout=0.3, connected=lambda: True)

    async def open_channel() -> AbstractChannel:
        return cast(AbstractChannel, Nacking(0.01))

    renewal = Renewal(pub.routes[0], open_channel, grace_s=0.05, every_s=0.1)
    try:
        for _ in range(20):  # 3 s of publishes, every one nacked
            await asyncio.gather(*(refused(pub) for _ in range(5)), asyncio.sleep(0.15))
        # 0.1, 0.2, 0.4, 0.8, 1.6 s apart: about 5 renewals in 3 s, not 30
        assert 3 <= renewal.renewed <= 7, renewal.renewed
    finally:
        await renewal.close()


class Held(Nacking):
    """Nacks every publish; the first only once `release` is set (a nack the broker sends late)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.published = 0

    async def basic_publish(self, body: bytes, **_: Any) -> object:
        self.published += 1
        if self.published == 1:
            await self.release.wait()
        raise aiormq.exceptions.DeliveryError(None, Basic.Nack())


async def test_a_late_nack_from_a_replaced_channel_does_not_replace_the_fresh_one() -> None:
    old = Held()
    pub = Publisher(cast(AbstractChannel, old), timeout=2.0, connected=lambda: True)
    opening = asyncio.Event()
    fresh: list[AbstractChannel] = []

    async def open_channel() -> AbstractChannel:
        await opening.wait()
        fresh.append(cast(AbstractChannel, Nacking()))
        return fresh[-1]

    renewal = Renewal(pub.routes[0], open_channel, grace_s=5.0, every_s=0.0)
    late = asyncio.create_task(refused(pub, timeout=2.0))  # waits on the old channel
    try:
        await eventually(lambda: old.published == 1, what="the first publish sent")
        await asyncio.gather(refused(pub), refused(pub))  # two nacks: one renewal under way, not two
        opening.set()
        await eventually(lambda: renewal.renewed == 1, what="the renewal")
        assert pub.routes[0].channel is fresh[0]
        old.release.set()  # the late nack, from the channel already replaced
        await late
        await asyncio.sleep(0.05)
        assert len(fresh) == 1 and pub.routes[0].channel is fresh[0] and renewal.renewed == 1
    finally:
        await renewal.close()
