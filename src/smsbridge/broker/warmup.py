"""Warming every route's channel for the destinations that are hedged.

Why (faults/README.md, "Another RabbitMQ"): a channel's *first* publish to a quorum queue asks
the leader it knows of, and when that leader's node is cut off by a partition the channel waits
for it until the majority drops its link to that node (about `net_ticktime`: 3.10.8 calls it
with no timeout, 4.0.5 with `net_ticktime` + 5 s). A channel that has already published to the
queue is a registered enqueuer: the new leader tells it (`leader_change`) and it confirms as
soon as the election is over. The standby route publishes to the inbound queue only once the
primary is set aside, i.e. cold, at exactly that moment: every webhook waited `net_ticktime`.

So once a hedged publish (`hedge=True`: its consumer drops a second copy by message id) is
confirmed, every other connected route whose current channel has not yet carried a confirmed
publish to that exchange and routing key gets one copy of that same message, in the
background: the caller does not wait for it. Once per (underlying channel, exchange, routing
key): a channel renewed after a nack (`broker/renewal.py`) or restored by aio-pika after a
reconnect is a new channel, and is warmed again by the next hedged publish. A copy that fails
is logged and forgotten, and the next hedged publish tries again. With one route, nothing.

The inbound stage drops the copy of a text as a Flowroute resend (the ledger has its Flowroute id
in its configuration; a conversation's texts are handled in order, so the copy comes after its
original). The copy of a delivery receipt changes nothing in the ledger but forwards its status
again with the same `event_id`, as a hedged second copy does (`broker/publisher.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

from smsbridge.broker.routes import Message, Route
from smsbridge.errors import BrokerUnavailable

log = structlog.get_logger("smsbridge.broker")
Destination = tuple[str, str]  # exchange, routing key
SendOn = Callable[[Route, Message], Awaitable[None]]  # one confirmed publish on one route


class Carried:
    """What one route's current channel has had confirmed: the route's channel (replaced by a
    renewal), its underlying AMQP channel (replaced by a reconnect) and the destinations."""

    __slots__ = ("channel", "underlay", "destinations")

    def __init__(self, channel: object, underlay: object) -> None:
        self.channel = channel
        self.underlay = underlay
        self.destinations: set[Destination] = set()

    def current(self, channel: object) -> bool:
        """Still the route's channel, and its underlying channel not closed (a reconnect closes it)."""
        return self.channel is channel and not getattr(self.underlay, "is_closed", True)


def cold(routes: Iterable[Route], carrier: Route, destination: Destination, carried: dict[Route, Carried],
         pending: set[tuple[Route, Destination]]) -> list[Route]:
    """The connected routes other than `carrier`, not set aside, whose current channel has not
    carried a confirmed publish to `destination`, and that no copy is on its way to already."""
    out = []
    for route in routes:
        if route is carrier or (route, destination) in pending or not route.connected():
            continue
        if route.clock() < route.set_aside_until:  # found stuck: no use, and a third copy
            continue
        record = carried.get(route)
        if record is None or not record.current(route.channel) or destination not in record.destinations:
            out.append(route)
    return out


class Warmup:
    """Records what each route's channel carried, and sends the warm-up copies (module docstring)."""

    def __init__(self, routes: list[Route], send_on: SendOn) -> None:
        self._routes = routes
        self._send_on = send_on
        self._carried: dict[Route, Carried] = {}
        self._pending: set[tuple[Route, Destination]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.copies = 0  # warm-up copies confirmed
        self.on_copy: Callable[[str], None] = lambda route: None  # a metric: the route's name

    def carried(self, route: Route, underlay: object, destination: Destination) -> None:
        """A publish to `destination` on `underlay`, `route`'s channel when it went, was confirmed."""
        record = self._carried.get(route)
        if record is None or record.channel is not route.channel or record.underlay is not underlay:
            record = self._carried[route] = Carried(route.channel, underlay)
        record.destinations.add(destination)

    def confirmed(self, carrier: Route, message: Message) -> None:
        """A hedged publish of `message` was confirmed on `carrier`: warm the other routes."""
        if len(self._routes) < 2:
            return
        destination = (message[0], message[1])
        for route in cold(self._routes, carrier, destination, self._carried, self._pending):
            self._pending.add((route, destination))
            task = asyncio.create_task(self._copy(route, message, destination))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, route: Route, message: Message, destination: Destination) -> None:
        try:
            await self._send_on(route, message)
        except BrokerUnavailable as exc:  # the next hedged publish tries again
            log.info("warm-up copy not confirmed", route=route.name, exchange=destination[0],
                     routing_key=destination[1], error=str(exc))
            return
        finally:
            self._pending.discard((route, destination))
        self.copies += 1
        self.on_copy(route.name)

    def idle(self) -> bool:
        """No warm-up copy under way."""
        return not self._tasks

    async def close(self) -> None:
        """Cancel the copies under way."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
