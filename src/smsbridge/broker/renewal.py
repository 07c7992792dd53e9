"""A publishing channel the broker nacks is replaced by a fresh one.

Why: RabbitMQ (3.10 at least) keeps, in each channel, what it learnt about a quorum queue when
that channel first published to it: the queue's members, the leader it had on record first.
If that leader's node is down at that moment (it just died, and the new leader is not elected
and recorded yet), the channel asks the dead node, is told `nodedown` and nacks the publish,
and it asks the same dead node again for every later publish to that queue: everything that
channel sends there is nacked until the node is back. In `make faults` that was the
connected-node kill's 19 s `recover s`: a bridge process reconnected within half a second,
before the queues it publishes to had new leaders on record, and its fresh channels, as well
as the second route's channel publishing there for the first time, refused texts for the 15 s
the node stayed down plus its restart. A channel opened later reads the queue's record again
and publishes to the new leader at once.

So a nack on a route makes it open a fresh channel on the same connection. One renewal at a
time, and only for a nack on the route's current channel: a late nack from a channel already
replaced says nothing about the fresh one, and must not replace it. At most one every `every_s`
at first (the one just opened may still have come too early), and that interval doubles, up to
`RENEW_MAX_S`, for each renewal after which nothing was confirmed yet: a broker that nacks for
other reasons (a `reject-publish` length limit) or for long (the leader's node stays down) must
not make us open a channel every half second. A confirm on the route starts the interval afresh.
The publisher's own retries go through the fresh channel. The old channel is closed once
publishes still waiting on it had `grace_s` to be confirmed (the caller passes its longest
publish timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from aio_pika.abc import AbstractChannel

from smsbridge.broker.routes import Route

log = structlog.get_logger("smsbridge.broker")
RENEW_EVERY_S = 0.5
RENEW_MAX_S = 8.0  # the longest pause between two renewals while nacks go on
OPEN_TIMEOUT_S = 5.0


class Renewal:
    """Gives `route` a fresh channel from `open_channel` when the broker nacks a publish on it."""

    def __init__(self, route: Route, open_channel: Callable[[], Awaitable[AbstractChannel]], *, grace_s: float,
                 every_s: float = RENEW_EVERY_S, retired: Callable[[AbstractChannel], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._route = route
        self._open = open_channel
        self._retired = retired  # told of each channel replaced, once it is closed
        self._grace_s = grace_s
        self._every_s = every_s
        self._clock = clock
        self._last = float("-inf")
        self._pause_s = every_s  # before the next renewal: doubles while renewals do not help
        self._renewing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.renewed = 0
        route.on_nack = self.nacked

    def nacked(self, channel: object) -> None:
        """Called by the publisher on a nack of a publish sent on `channel`: renew unless that
        channel was already replaced, a renewal is under way, or one was lately."""
        if channel is not self._route.channel or self._renewing:
            return
        now = self._clock()
        if self._route.last_real_ok >= self._last:  # a publish was confirmed since the last renewal
            self._pause_s = self._every_s
        if now - self._last < self._pause_s:
            return
        if self._last > float("-inf"):
            self._pause_s = min(self._pause_s * 2, max(RENEW_MAX_S, self._every_s))
        self._last = now
        self._renewing = True
        self._spawn(self._renew())

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _renew(self) -> None:
        try:
            fresh = await asyncio.wait_for(self._open(), OPEN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the connection is down: it restores the channel itself
            log.warning("could not open a fresh publishing channel after a nack", route=self._route.name,
                        error=repr(exc))
            return
        finally:
            self._renewing = False
        old, self._route.channel = self._route.channel, fresh
        self.renewed += 1
        log.warning("publishing channel replaced after a nack", route=self._route.name)
        self._spawn(self._retire(old))

    async def _retire(self, old: AbstractChannel) -> None:
        await asyncio.sleep(self._grace_s)  # publishes still waiting on it get their confirm (or nack)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.close(), OPEN_TIMEOUT_S)
        with contextlib.suppress(ValueError):
            self._retired(old)

    async def close(self) -> None:
        """Stop: cancel a renewal under way; channels are closed with the connection's others."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
