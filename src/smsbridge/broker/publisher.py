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
the timeout. Meanwhile newer publishes to the same destination wait behind the refused one, in
their order (`broker/lines.py`): without that, one could go through in the pause and be stored
first. An unroutable return is an answer and is not retried.

A route can also go quiet without failing: a node cut off from its peers still confirms what
needs no queue (the liveness probe) but not what its quorum queues must commit, and a silent
network partition confirms nothing, while the connection looks open until heartbeats give up.
So each route keeps its publishes that wait for a confirm, oldest first (`broker/routes.py`
holds that bookkeeping and the checks below). A route is *lagging*
when its oldest has waited `LAG_S` and nothing it carried was confirmed since that one went (a
busy broker confirms late but keeps confirming; a stuck route confirms nothing). When a route
lags while the other one confirmed something sent after that oldest publish (and is not lagging
itself), the other route is demonstrably answering faster: the lagging route is set aside for
new publishes for `SUSPECT_S` (or until its connection drops), and every publish waiting on it
that allows a second copy (`hedge=True`) is sent again on the other route, all of them at once
and in the order they were first sent. Nothing newer goes that way until each second copy is
confirmed or has finally failed: one the broker refuses (a nack while a queue's leader is
re-elected) is sent again, a little later each time, until its publish's deadline, so a newer
text cannot be stored before an older one still waiting on the stuck route (a conversation's
texts keep their order). The first confirm of either copy completes the publish; a late confirm
of the other is ignored (aiormq drops the confirm of a publish nobody waits for). A second copy
is one more message stored, so only a caller whose consumer drops a second copy by its id, and
who has a client waiting, asks for it: the receiver, for webhooks (the inbound stage drops a
text it has seen; a receipt's second copy changes nothing in the ledger, but as the same event
as the first it forwards its status again, with the same `event_id`: `ops.claim_and_record_dlr`).
Not the others: a repeated outbound request (relay API, SIP intake) is answered with its
status again, a parked webhook would sit twice in the dead-letter queue, and a worker's publish
(next stage, status, AMQP delivery to a PBX, retry) has nobody waiting on it; they still avoid
a lagging route for new publishes.

Hedged destinations are also warmed on every route (`broker/warmup.py`): once a hedged publish is
confirmed, a route whose channel has not yet carried one to that queue gets one copy, so that in
a partition it is already an enqueuer that hears of a new leader, not a first publisher waiting
on the old one.
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
from smsbridge.broker.flows import Flows
from smsbridge.broker.lines import Lines, Place
from smsbridge.broker.routes import LAG_S, STALE_AFTER_S, Message, Route, Waiting, watch
from smsbridge.broker.warmup import Warmup
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


class RouteDown(BrokerUnavailable):
    """The route itself failed (connection or channel lost, no confirm in time): another may work."""


class Publisher:
    """Publishes on the channel underneath aio-pika's robust channel, with AMQP properties built
    directly: no aio-pika `Message` or `Exchange` per publish (about 5% of the receiver's CPU)."""

    STALE_AFTER_S = STALE_AFTER_S  # a route that confirmed nothing for this long is tried last

    def __init__(self, channel: AbstractChannel, *, timeout: float,
                 connected: Callable[[], bool] | None = None) -> None:
        self.routes = [Route(channel, connected=connected)]
        self._timeout = timeout
        self.gate: Callable[[], bool] | None = None  # False: the broker is not answering now
        self.flows = Flows()  # the destinations readiness watches (broker/flows.py)
        self.warmup = Warmup(self.routes, self._warm)  # hedged destinations on every route (broker/warmup.py)
        self.lines = Lines()  # refused publishes keep their place ahead of newer ones (broker/lines.py)

    def add_route(self, channel: AbstractChannel, *, connected: Callable[[], bool], name: str) -> None:
        """A second way to the broker (a connection to another node), used when the first fails."""
        self.routes.append(Route(channel, connected=connected, name=name))

    def _in_order(self) -> list[Route]:
        """Routes that answer and were not found lagging first, the primary first among equals
        (sort is stable)."""
        now = time.monotonic()
        return sorted(self.routes, key=lambda r: not (r.answering(self.STALE_AFTER_S) and now >= r.set_aside_until))

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
        hedge: bool = False,
    ) -> None:
        """`hedge=True`: the consumer drops a second copy by its message id, so a publish waiting on
        a lagging route may be sent again on the other (module docstring)."""
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
        deadline = time.monotonic() + budget
        message: Message = (exchange, routing_key, body, properties, mandatory)
        flow = self.flows.get(exchange, routing_key)
        if flow is None:
            carrier = await self._send(message, budget, deadline, hedge)
            if hedge:
                self.warmup.confirmed(carrier, message)
            return
        token = flow.went()
        confirmed: bool | None = None  # None: cancelled, says nothing about the destination
        try:
            carrier = await self._send(message, budget, deadline, hedge)
            confirmed = True
            if hedge:
                self.warmup.confirmed(carrier, message)
        except RouteDown:
            confirmed = False
            raise
        except BrokerUnavailable:
            confirmed = True  # unroutable: the broker answered
            raise
        finally:
            flow.ended(token, confirmed=confirmed)

    async def _send(self, message: Message, budget: float, deadline: float, hedge: bool) -> Route:
        """Through the first route that takes it, trying them all again until the deadline, behind
        any older refused publish to the same destination (`broker/lines.py`); the route it went on."""
        if len(self.routes) == 1:
            await self._attempt(self.routes[0], message, budget, deadline, hedge=False)
            return self.routes[0]
        place = self.lines.place((message[0], message[1]))
        refused, confirmed = 0, False
        try:
            while True:
                if not await place.turn(deadline):
                    raise RouteDown(f"publish to {message[0]}/{message[1]} not attempted in time: "
                                    "it waited behind an older unconfirmed publish there")
                outcome = await self._each_route(message, deadline, hedge, place)
                if isinstance(outcome, Route):
                    confirmed = True
                    return outcome
                place.join()
                if not place.heads():
                    continue  # an older unconfirmed publish went ahead: wait for it, not for a pause
                # Every route failed: a node dying takes its queues' leaders with it, and until their
                # elections end (well under a second) the broker nacks what is routed to them.
                pause = min(RETRY_PAUSE_S * 2 ** refused, MAX_RETRY_PAUSE_S)
                refused += 1
                if time.monotonic() + pause >= deadline:
                    raise outcome
                await place.pause(pause)
        finally:
            place.leave(confirmed=confirmed)

    async def _each_route(self, message: Message, deadline: float, hedge: bool, place: Place) -> Route | RouteDown:
        """Try the routes in turn; the route once one confirmed, else the last route's failure. A
        publish not confirmed on a route takes its place in line: it tries the next route only
        while no older unconfirmed publish to the same destination waits."""
        failure: RouteDown | None = None
        for route in self._in_order():
            left = max(deadline - time.monotonic(), MIN_RETRY_S)
            if not route.connected():
                failure = RouteDown(f"publish to {message[0]}/{message[1]} not attempted: {route.name} route down")
                continue
            if route.starting:  # second copies bound this way are confirmed first: a conversation keeps its order
                try:
                    await asyncio.wait_for(route.started.wait(), max(deadline - time.monotonic(), 0.0))
                except TimeoutError:
                    failure = RouteDown(f"publish to {message[0]}/{message[1]} not attempted: "
                                        f"second copies on the {route.name} route still unconfirmed")
                    continue
            try:
                await self._attempt(route, message, left, deadline, hedge=hedge)
                return route
            except RouteDown as exc:  # the node went away under this publish: the other route may work
                failure = exc
                place.join()
                if not place.heads():
                    break
        assert failure is not None  # there is always a route
        return failure

    async def _attempt(self, route: Route, message: Message, left: float, deadline: float, *, hedge: bool) -> None:
        """One publish on one route, counted among the route's waiting ones; with `hedge`, it ends
        early once a second copy sent on another route (`routes.hedge_all`) is confirmed."""
        waiting = Waiting(route.clock(), deadline, message if hedge else None)
        route.waiting[waiting] = None
        if route.timer is None and len(self.routes) > 1:
            watch(self.routes, route, LAG_S, self._hedge)
        try:
            if not hedge:
                await self.publish_on(route, *message, left)
                return
            try:
                async with asyncio.timeout(None) as window:
                    waiting.window = window
                    await self.publish_on(route, *message, left)
                return
            except (RouteDown, TimeoutError) as exc:
                waiting.window = None
                if waiting.hedged or (waiting.hedge is not None and await asyncio.shield(waiting.hedge)):
                    return  # the second copy was confirmed
                if isinstance(exc, RouteDown):
                    raise
                raise RouteDown(f"publish to {message[0]}/{message[1]} not confirmed in time") from exc
        finally:
            waiting.window = None
            del route.waiting[waiting]
            if waiting.hedge is not None and not waiting.hedge.done():
                waiting.hedge.cancel()  # this copy was confirmed first: the other need not wait

    async def _hedge(self, waiting: Waiting, route: Route) -> bool:
        """The second copy: True once confirmed, and the first copy's wait is ended. Refused, it
        is sent again (a little later each time) until the publish's deadline: given up at the
        first refusal, newer publishes would go this way while this one still waits on the stuck
        route, and be stored before it. `Route.starting` holds them back meanwhile (released by
        the task's done callback)."""
        assert waiting.message is not None
        for rounds in itertools.count():
            left = max(waiting.deadline - time.monotonic(), MIN_RETRY_S)
            try:
                await self.publish_on(route, *waiting.message, left)
                break
            except RouteDown:
                pause = min(RETRY_PAUSE_S * 2 ** rounds, MAX_RETRY_PAUSE_S)
                if time.monotonic() + pause >= waiting.deadline:
                    return False  # the first copy goes on waiting, until the same deadline
                await asyncio.sleep(pause)
            except BrokerUnavailable:
                return False  # unroutable: an answer, final
        waiting.hedged = True
        if waiting.window is not None:
            waiting.window.reschedule(asyncio.get_running_loop().time())
        return True

    async def publish_on(self, route: Route, exchange: str, routing_key: str, body: bytes,
                         properties: Basic.Properties, mandatory: bool, timeout: float, *,
                         probe: bool = False) -> None:
        """One confirmed publish on one route; a confirm marks the route as answering."""
        sent, channel_sent = route.clock(), route.channel
        try:
            if route.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
            async with asyncio.timeout(timeout):  # also bounds waiting for a reconnecting channel
                channel = await route.channel.get_underlay_channel()
                confirmation = await channel.basic_publish(
                    body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=mandatory,
                    timeout=timeout,
                )
        except aiormq.exceptions.PublishError as exc:  # returned unroutable: the broker answered, and will again
            route.confirmed(sent, probe=probe)
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not acknowledged: unroutable "
                                    f"({getattr(exc.frame, 'reply_text', 'returned')})") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError) as exc:
            route.failed(nacked=isinstance(exc, aiormq.exceptions.DeliveryError)
                         and isinstance(exc.frame, Basic.Nack), probe=probe, channel=channel_sent)
            raise RouteDown(f"publish to {exchange}/{routing_key} not confirmed: {exc!r}") from exc
        except asyncio.CancelledError as exc:
            # aiormq cancels the confirm futures of a connection it drops (e.g. after missed
            # heartbeats): for us that is an unconfirmed publish. Our own cancellation stays one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            route.failed(probe=probe, channel=channel_sent)
            raise RouteDown(f"publish to {exchange}/{routing_key} not confirmed: connection lost") from exc
        if not isinstance(confirmation, Basic.Ack):  # the message came back unroutable: final
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not acknowledged: {confirmation!r}")
        route.confirmed(sent, probe=probe)  # any confirmed publish shows the route answers, not only the probe's
        if len(self.routes) > 1 and not probe:
            self.warmup.carried(route, channel, (exchange, routing_key))

    async def _warm(self, route: Route, message: Message) -> None:
        """One warm-up copy (broker/warmup.py): a plain confirmed publish, not among the route's
        waiting ones (it is nobody's answer) nor retried."""
        await self.publish_on(route, *message, self._timeout)

    async def close(self) -> None:
        """Cancel the warm-up copies under way (before the channels close)."""
        await self.warmup.close()

    async def to_stage(self, prefix: str, stage: str, body: bytes, *, message_id: str | None = None,
                       hedge: bool = False) -> None:
        """A fresh message for a stage: attempt 0, first seen now."""
        queue = names.stage_queue(prefix, stage)
        headers = {names.H_ATTEMPT: 0, names.H_FIRST_SEEN: now_ms()}
        await self.publish(names.work_exchange(prefix), queue, body, headers=headers, message_id=message_id,
                           hedge=hedge)

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
