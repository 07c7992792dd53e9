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
import inspect
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
    timeout: asyncio.Timeout | None = None  # the attempt's, moved by each renewal

    def move(self, at: float) -> None:
        self.at = at
        if self.timeout is not None:
            self.timeout.reschedule(at)


async def within_lease(attempt: Awaitable[T], renew: Renew, lease_s: float, held_from: float) -> T:
    """`attempt`'s result, the claim (taken at `held_from`, monotonic) renewed meanwhile; the
    attempt cancelled and `LeaseEnded` raised once the claim cannot be kept.

    The attempt runs in the caller's task under a timeout that each renewal moves, and the
    heartbeat is a timer until its first renewal is due: most attempts end long before that, and
    two tasks per delivery (the attempt's and the heartbeat's) cost a turn of the event loop each
    before the PBX is even called (bench/README.md, "Webhook to PBX latency")."""
    loop = asyncio.get_running_loop()
    stop = _Stop(lease.stop_at(held_from, lease_s))
    if loop.time() >= stop.at:  # the claim's write took the lease: never start what cannot finish
        if inspect.iscoroutine(attempt):
            attempt.close()
        raise LeaseEnded(f"delivery stopped before its claim's lease ended: no renewal within {lease_s:g} s")
    beats: list[asyncio.Task[None]] = []
    timer = loop.call_at(lease.next_renewal_at(held_from, lease_s), lambda: beats.append(
        loop.create_task(_heartbeat(stop, renew, lease_s, held_from))))
    deadline = asyncio.timeout_at(stop.at)
    try:
        async with deadline:
            stop.timeout = deadline
            result = await attempt
        if not deadline.expired():
            return result
    except TimeoutError:
        if not deadline.expired():  # the attempt's own timeout, not the lease's
            raise
    finally:
        stop.timeout = None
        timer.cancel()
        for beat in beats:
            await _cancel(beat)
    why = "another worker holds it" if stop.lost else f"no renewal within {lease_s:g} s"
    raise LeaseEnded(f"delivery stopped before its claim's lease ended: {why}")


async def _heartbeat(stop: _Stop, renew: Renew, lease_s: float, held_from: float) -> None:
    """Started when the first renewal is due (`within_lease`)."""
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
            stop.lost = True
            stop.move(loop.time())
            log.error("delivery claim taken over while its attempt ran: stopping it", outcome="claim_lost")
            return
        stop.move(lease.stop_at(started, lease_s))


async def _cancel(task: asyncio.Future[T]) -> None:
    if task.done():
        return
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
