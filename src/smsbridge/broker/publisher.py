"""Publishing with publisher confirms: `publish` returns only once the broker has the message.

Any failure (connection down, channel closed, nack, unroutable, timeout) becomes
`BrokerUnavailable`, so callers have one thing to catch and one meaning: nothing was stored.
With a `gate` (see `broker/liveness.py`), a publish while the broker is known not to answer
fails at once instead of waiting out its confirm timeout.

In a cluster the publisher has two routes, each a confirm channel on its own connection to its
own node (see `connection.py`). A publish goes through the first route that is connected and
answering; if that route's connection fails under it (the node died: reset, closed channel,
lost confirm), the same message goes again through the other route, within the same timeout.
A message whose confirm was lost may so be stored twice: every consumer already drops a second
copy by message id (the receiver's Flowroute id, the ledger's claims), as it does for the
broker's own redeliveries. aiormq raises a nack as an error, so it too is tried on the other
route: while a dead node's queue leaders are re-elected the broker nacks what goes to them, so
when every route failed the publisher tries them all again, a little later each time, until
the timeout. An unroutable return is an answer and is not retried.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names
from smsbridge.errors import BrokerUnavailable
from smsbridge.redact import header_text

Headers = Mapping[str, Any]
Basic = aiormq.spec.Basic
MIN_RETRY_S = 0.5  # a retry on the second route gets at least this, even past the deadline
RETRY_PAUSE_S = 0.05  # between two rounds over every route, doubling...
MAX_RETRY_PAUSE_S = 0.8  # ...up to this, until the publish timeout
PERSISTENT = 2  # AMQP delivery mode: written to disk (quorum queues keep everything on disk anyway)


def now_ms() -> int:
    return int(time.time() * 1000)


class Route:
    """One way to the broker: a confirm channel on one connection, and when it last answered."""

    def __init__(self, channel: AbstractChannel, *, connected: Callable[[], bool] | None = None,
                 name: str = "primary", clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self.name = name
        self._connected = connected
        self._clock = clock
        self.last_ok = clock()  # created once the topology is declared, itself a round trip
        self.last_failed = float("-inf")
        self.on_nack: Callable[[], None] | None = None  # the broker nacked a publish: broker/renewal.py

    def connected(self) -> bool:
        return not self.channel.is_closed and (self._connected is None or self._connected())

    def confirmed(self) -> None:
        self.last_ok = self._clock()

    def failed(self, *, nacked: bool = False) -> None:
        self.last_failed = self._clock()
        if nacked and self.on_nack is not None:
            self.on_nack()

    def fresh(self, stale_after_s: float) -> bool:
        """Confirmed something in the last `stale_after_s` seconds."""
        return self._clock() - self.last_ok <= stale_after_s

    def answering(self, stale_after_s: float) -> bool:
        """Connected, confirmed something lately, and not failed since."""
        return self.connected() and self.last_ok >= self.last_failed and self.fresh(stale_after_s)


class RouteDown(BrokerUnavailable):
    """The route itself failed (connection or channel lost, no confirm in time): another may work."""


class Publisher:
    """Publishes on the channel underneath aio-pika's robust channel, with AMQP properties built
    directly: no aio-pika `Message` or `Exchange` per publish (about 5% of the receiver's CPU)."""

    STALE_AFTER_S = 3.0  # a route that confirmed nothing for this long is tried last

    def __init__(self, channel: AbstractChannel, *, timeout: float,
                 connected: Callable[[], bool] | None = None) -> None:
        self.routes = [Route(channel, connected=connected)]
        self._timeout = timeout
        self.gate: Callable[[], bool] | None = None  # False: the broker is not answering now

    def add_route(self, channel: AbstractChannel, *, connected: Callable[[], bool], name: str) -> None:
        """A second way to the broker (a connection to another node), used when the first fails."""
        self.routes.append(Route(channel, connected=connected, name=name))

    def _in_order(self) -> list[Route]:
        """Routes that answer first, the primary first among equals (sort is stable)."""
        return sorted(self.routes, key=lambda r: not r.answering(self.STALE_AFTER_S))

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Headers | None = None,
        message_id: str | None = None,
        expiration_s: float | None = None,
        mandatory: bool = True,
        timeout: float | None = None,
        gated: bool = True,
    ) -> None:
        if gated and self.gate is not None and not self.gate():
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not attempted: the broker is not answering")
        properties = Basic.Properties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            headers=dict(headers or {}),
            message_id=message_id,
            expiration=None if expiration_s is None else str(int(expiration_s * 1000)),
        )
        budget = self._timeout if timeout is None else timeout
        if len(self.routes) == 1:
            await self.publish_on(self.routes[0], exchange, routing_key, body, properties, mandatory, budget)
            return
        deadline = time.monotonic() + budget
        for rounds in itertools.count():
            failure = await self._each_route(exchange, routing_key, body, properties, mandatory, deadline)
            if failure is None:
                return
            # Every route failed: a node dying takes its queues' leaders with it, and until their
            # elections end (well under a second) the broker nacks what is routed to them.
            pause = min(RETRY_PAUSE_S * 2 ** rounds, MAX_RETRY_PAUSE_S)
            if time.monotonic() + pause >= deadline:
                raise failure
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _each_route(self, exchange: str, routing_key: str, body: bytes, properties: Basic.Properties,
                          mandatory: bool, deadline: float) -> RouteDown | None:
        """Try the routes in turn; None once one confirmed, else the last route's failure."""
        failure: RouteDown | None = None
        for route in self._in_order():
            left = max(deadline - time.monotonic(), MIN_RETRY_S)
            if not route.connected():
                failure = RouteDown(f"publish to {exchange}/{routing_key} not attempted: {route.name} route down")
                continue
            try:
                await self.publish_on(route, exchange, routing_key, body, properties, mandatory, left)
                return None
            except RouteDown as exc:  # the node went away under this publish: the other route may work
                failure = exc
        return failure

    async def publish_on(self, route: Route, exchange: str, routing_key: str, body: bytes,
                         properties: Basic.Properties, mandatory: bool, timeout: float) -> None:
        """One confirmed publish on one route; a confirm marks the route as answering."""
        try:
            if route.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
            async with asyncio.timeout(timeout):  # also bounds waiting for a reconnecting channel
                channel = await route.channel.get_underlay_channel()
                confirmation = await channel.basic_publish(
                    body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=mandatory,
                    timeout=timeout,
                )
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError) as exc:
            route.failed(nacked=isinstance(exc, aiormq.exceptions.DeliveryError)
                         and isinstance(exc.frame, Basic.Nack))
            raise RouteDown(f"publish to {exchange}/{routing_key} not confirmed: {exc!r}") from exc
        except asyncio.CancelledError as exc:
            # aiormq cancels the confirm futures of a connection it drops (e.g. after missed
            # heartbeats): for us that is an unconfirmed publish. Our own cancellation stays one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            route.failed()
            raise RouteDown(f"publish to {exchange}/{routing_key} not confirmed: connection lost") from exc
        if not isinstance(confirmation, Basic.Ack):  # the message came back unroutable: final
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not acknowledged: {confirmation!r}")
        route.confirmed()  # any confirmed publish shows the route answers, not only the liveness probe's

    async def to_stage(self, prefix: str, stage: str, body: bytes, *, message_id: str | None = None) -> None:
        """A fresh message for a stage: attempt 0, first seen now."""
        queue = names.stage_queue(prefix, stage)
        headers = {names.H_ATTEMPT: 0, names.H_FIRST_SEEN: now_ms()}
        await self.publish(names.work_exchange(prefix), queue, body, headers=headers, message_id=message_id)

    async def park(self, prefix: str, stage: str, body: bytes, *, reason: str, code: str, extra: Headers) -> None:
        """Straight to the dead-letter queue: for input we cannot process but must not drop."""
        headers = {
            names.H_STAGE: stage,
            names.H_REASON: header_text(reason),
            names.H_REASON_CODE: code,
            names.H_ATTEMPT: 0,
            names.H_DEAD_AT: now_ms(),
            **extra,
        }
        await self.publish(names.dead_exchange(prefix), stage, body, headers=headers)
