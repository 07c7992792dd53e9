"""Publishing texts whose turn has come (see `ledger/order.py`), and the sweep that keeps a
conversation from waiting for ever on a head that was lost or dead-lettered by the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta

import structlog

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import delivery_stage_decoder
from smsbridge.ledger import Ledger

log = structlog.get_logger("smsbridge.delivery")


def stale_after(max_delay_s: float, lease_s: float) -> timedelta:
    """Longer than a live head can go untouched while it retries: the longest retry wait (a
    delay tier holds up to twice its nominal wait), a lease another worker may hold, and slack
    for a queue backlog."""
    return timedelta(seconds=2 * min(max_delay_s, names.MAX_DELAY_S) + lease_s + 60)


class Turns:
    def __init__(self, publisher: Publisher, prefix: str) -> None:
        self._publisher = publisher
        self._prefix = prefix

    async def publish(self, bodies: Iterable[bytes], *, after_s: float = 0.0) -> None:
        """To the delivery stage as a first attempt, aged from the text's arrival: `max_age_s`
        counts from when the customer sent it, not from when its turn came. With `after_s`, round
        the delay queue first, arriving that much later (`broker/handback.py`)."""
        queue = names.stage_queue(self._prefix, "delivery")
        for body in bodies:
            delivery = delivery_stage_decoder.decode(body)
            headers = {names.H_ATTEMPT: 0, names.H_FIRST_SEEN: int(delivery.received_at.timestamp() * 1000)}
            if after_s > 0:
                # the stage queue's own key: the delay queue dead-letters into the work exchange
                await self._publisher.publish(names.delay_exchange(self._prefix), queue, body,
                                              headers={**headers, names.H_DELAY_TIER: str(names.delay_tier(after_s))},
                                              message_id=delivery.event_id, expiration_s=after_s)
            else:
                await self._publisher.publish(names.work_exchange(self._prefix), queue, body,
                                              headers=headers, message_id=delivery.event_id)

    async def publish_or_leave(self, bodies: Iterable[bytes]) -> None:
        """As `publish`, but a broker failure is left to the sweep (the text is `live` in the ledger)."""
        try:
            await self.publish(bodies)
        except BrokerUnavailable as exc:
            log.warning("next text of the conversation not published; the order sweep will", error=str(exc))


class OrderSweeper:
    """Every `interval_s`: republish each head untouched for `stale`, then release its conversation."""

    def __init__(self, ledger: Ledger, turns: Turns, stale: timedelta, interval_s: float = 30.0) -> None:
        self._ledger = ledger
        self._turns = turns
        self._stale = stale
        self._interval_s = interval_s

    async def sweep(self) -> int:
        stale = await self._ledger.stale_turns(self._stale)
        for key, body in stale:
            await self._turns.publish([body])  # first: released or not, it must not be lost
            due = await self._ledger.release_turn(key, self._stale)
            log.error("conversation released: its earliest text made no progress", mdr_id=key.mdr_id,
                      config=key.config_id, extension=key.extension, stale_s=self._stale.total_seconds(),
                      outcome="released")
            await self._turns.publish(due)
        return len(stale)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # ledger or broker down: try again next round
                log.warning("order sweep failed", error=repr(exc))
