"""Run a delivery attempt that cannot outlive its claim (the arithmetic is `lease.py`).

While the attempt runs, a heartbeat renews the claim's lease. The attempt is cancelled when the
lease it last renewed is about to end (renewals failed: the ledger is slow or away) or at once
when a renewal finds the claim no longer ours; it then fails as a `RetryableError`, so the text
is tried again later, by whichever worker holds the claim then. A live claim is never taken over
(`ops.claim_delivery`), so two attempts at one text never overlap: a phone never gets the parts
of a long SIP text twice at once or interleaved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import structlog

from smsbridge import lease
from smsbridge.errors import RetryableError
from smsbridge.ledger import DeliveryKey, Ledger
from smsbridge.ledger.order import Turn

log = structlog.get_logger("smsbridge.delivery")
T = TypeVar("T")
Renew = Callable[[], Awaitable[bool]]  # True: renewed; False: the claim is not ours; raises: not known


class LeaseEnded(RetryableError):
    """The attempt was stopped: its claim's lease could not be kept."""


@dataclass
class HeldClaim:
    """One (text, target) claim as its worker holds it: taken, renewed, released by the leases
    this worker set. A renewal whose answer was lost may have committed, so every lease this
    worker may have set since the last one it knows of counts as its own (`held`); a claim whose
    lease is none of them is another worker's, and is neither renewed nor released."""

    ledger: Ledger
    key: DeliveryKey
    lease_s: float
    held: set[datetime] = field(default_factory=set)
    held_from: float = 0.0  # the monotonic time the claim was taken, read before its lease

    async def take(self) -> tuple[Turn, list[bytes]]:
        self.held_from = asyncio.get_running_loop().time()
        until = self.ledger.lease_until(self.lease_s)
        self.held = {until}
        return await self.ledger.claim_turn_until(self.key, until)

    async def renew(self) -> bool:
        until = self.ledger.lease_until(self.lease_s)
        self.held.add(until)
        if not await self.ledger.renew_delivery(self.key, frozenset(self.held), until):
            return False
        self.held = {until}
        return True

    async def release(self) -> None:
        await self.ledger.release_delivery(self.key, frozenset(self.held))


@dataclass
class _Stop:
    at: float
    lost: bool = False


async def within_lease(attempt: Awaitable[T], renew: Renew, lease_s: float, held_from: float) -> T:
    """`attempt`'s result, the claim (taken at `held_from`, monotonic) renewed meanwhile; the
    attempt cancelled and `LeaseEnded` raised once the claim cannot be kept."""
    loop = asyncio.get_running_loop()
    stop = _Stop(lease.stop_at(held_from, lease_s))
    task = asyncio.ensure_future(attempt)
    beat = asyncio.create_task(_heartbeat(stop, renew, lease_s, held_from))
    try:
        while not task.done() and loop.time() < stop.at:
            waiting = {task} if beat.done() else {task, beat}
            await asyncio.wait(waiting, timeout=stop.at - loop.time(), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        await _cancel(task)
        why = "another worker holds it" if stop.lost else f"no renewal within {lease_s:g} s"
        raise LeaseEnded(f"delivery stopped before its claim's lease ended: {why}")
    finally:
        await _cancel(beat)
        await _cancel(task)


async def _heartbeat(stop: _Stop, renew: Renew, lease_s: float, held_from: float) -> None:
    loop = asyncio.get_running_loop()
    started = held_from
    while True:
        await asyncio.sleep(max(0.0, lease.next_renewal_at(started, lease_s) - loop.time()))
        started = loop.time()
        try:
            ours = await renew()
        except Exception as exc:  # the ledger slow or away: the stop stands; try again next round
            log.warning("delivery claim not renewed", error=repr(exc)[:200])
            continue
        if not ours:
            stop.at, stop.lost = loop.time(), True
            log.error("delivery claim taken over while its attempt ran: stopping it", outcome="claim_lost")
            return
        stop.at = lease.stop_at(started, lease_s)


async def _cancel(task: asyncio.Future[T]) -> None:
    if task.done():
        return
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
