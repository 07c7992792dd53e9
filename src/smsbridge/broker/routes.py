"""A publisher's routes to the broker, and the checks that set a stuck one aside.

A route can go quiet without failing: a node cut off from its peers still confirms what needs no
queue (the liveness probe) but not what its quorum queues must commit, and a silent network
partition confirms nothing, while the connection looks open until heartbeats give up. So each
route keeps its publishes that wait for a confirm, oldest first. A route is *lagging* when its
oldest has waited `LAG_S` and nothing it carried was confirmed since that one went (a busy
broker confirms late but keeps confirming; a stuck route confirms nothing). When a route lags
while the other one confirmed something sent after that oldest publish (and is not lagging
itself), the other route is demonstrably answering faster: the lagging route is set aside for
new publishes for `SUSPECT_S` (or until its connection drops), and every publish waiting on it
that allows a second copy is sent again on the other route (`hedge_all`), all of them at once and
in the order they were first sent. `broker/publisher.py` says who allows a second copy and why.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiormq
import structlog
from aio_pika.abc import AbstractChannel

log = structlog.get_logger("smsbridge.broker")
# exchange, routing key, body, properties, mandatory
Message = tuple[str, str, bytes, aiormq.spec.Basic.Properties, bool]
STALE_AFTER_S = 3.0  # a route that confirmed nothing for this long is tried last
# A route whose oldest waiting publish is this old, with nothing confirmed since it went, lags.
# Well above a confirm's usual time (milliseconds; tens on a busy host), and low enough that a
# hedged webhook is still answered within a second.
LAG_S = 0.5
SUSPECT_S = 10.0  # a route found lagging takes no new publishes first for this long...
RECHECK_S = 0.1  # ...and while it lags, whether the other route answers is looked at this often


class Waiting:
    """One publish waiting for its confirm on a route, and what a second copy needs."""

    __slots__ = ("sent", "deadline", "message", "window", "hedge", "hedged")

    def __init__(self, sent: float, deadline: float, message: Message | None) -> None:
        self.sent = sent
        self.deadline = deadline
        self.message = message  # None: this caller does not allow a second copy
        self.window: asyncio.Timeout | None = None  # ended early once the second copy is confirmed
        self.hedge: asyncio.Task[bool] | None = None
        self.hedged = False  # the second copy was confirmed


class Route:
    """One way to the broker: a confirm channel on one connection, when it last answered, and the
    publishes waiting on it."""

    def __init__(self, channel: AbstractChannel, *, connected: Callable[[], bool] | None = None,
                 name: str = "primary", clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self.name = name
        self._connected = connected
        self.clock = clock
        self.last_ok = clock()  # created once the topology is declared, itself a round trip
        self.last_ok_sent = self.last_ok  # when the latest confirmed publish (probe or not) was sent
        self.last_real_ok = self.last_ok  # the latest confirm of a publish that was not a probe
        self.last_failed = float("-inf")
        # Publishes (not probes) refused or lost with none confirmed since: when the first and the
        # latest of them failed. A nack ends a publish's wait at once, so `waiting` never shows it.
        self.failing_since = float("inf")
        self.last_real_failed = float("-inf")
        self.on_nack: Callable[[object], None] | None = None  # a publish on this channel was nacked: broker/renewal.py
        self.waiting: dict[Waiting, None] = {}  # insertion-ordered: the oldest first
        self.set_aside_until = float("-inf")  # found lagging: new publishes go elsewhere first
        self.starting: set[Waiting] = set()  # second copies bound for this route, not yet confirmed or failed
        self.started = asyncio.Event()  # set while `starting` is empty
        self.started.set()
        self.timer: asyncio.TimerHandle | None = None

    def connected(self) -> bool:
        up = not self.channel.is_closed and (self._connected is None or self._connected())
        if not up:  # a new connection (to another node, or the same one healed) starts afresh
            self.set_aside_until = float("-inf")
        return up

    def confirmed(self, sent: float, *, probe: bool = False) -> None:
        now = self.clock()
        self.last_ok = now
        self.last_ok_sent = max(self.last_ok_sent, sent)
        if not probe:
            self.last_real_ok = now
            self.failing_since = float("inf")

    def failed(self, *, nacked: bool = False, probe: bool = False, channel: object = None) -> None:
        """`channel`: the one the publish went on (the route's may have been replaced since)."""
        now = self.clock()
        self.last_failed = now
        if not probe:
            self.failing_since = min(self.failing_since, now)
            self.last_real_failed = now
        if nacked and self.on_nack is not None:
            self.on_nack(self.channel if channel is None else channel)

    def fresh(self, stale_after_s: float) -> bool:
        """Confirmed something in the last `stale_after_s` seconds."""
        return self.clock() - self.last_ok <= stale_after_s

    def answering(self, stale_after_s: float) -> bool:
        """Connected, confirmed something lately, and not failed since."""
        return self.connected() and self.last_ok >= self.last_failed and self.fresh(stale_after_s)

    def oldest(self) -> float:
        """When the oldest publish still waiting for its confirm went (infinity: none waits)."""
        for waiting in self.waiting:
            return waiting.sent
        return float("inf")

    def lagging(self, after_s: float, now: float) -> bool:
        """Its oldest waiting publish went `after_s` ago, and no publish was confirmed since."""
        oldest = self.oldest()
        return now - oldest >= after_s and self.last_real_ok < oldest

    def refusing(self, after_s: float, now: float) -> bool:
        """Its publishes have failed (nacked, lost) for `after_s`, lately too, and none was
        confirmed since the first of them failed: a probe may still pass."""
        return now - self.failing_since >= after_s and now - self.last_real_failed <= after_s


def second_copy_ended(route: Route, waiting: Waiting, _: object) -> None:
    """A second copy's task ended (confirmed, finally failed, cancelled, or never started)."""
    route.starting.discard(waiting)
    if not route.starting:
        route.started.set()


SecondCopy = Callable[[Waiting, Route], Coroutine[Any, Any, bool]]  # sends one, True once confirmed


def watch(routes: list[Route], route: Route, delay: float, send: SecondCopy) -> None:
    """Check `route` in `delay` seconds (`check`); `send` sends a second copy."""
    # In a context of its own: not the log context (stage, message ids) of the publish that armed it.
    route.timer = asyncio.get_running_loop().call_later(delay, check, routes, route, send,
                                                        context=contextvars.Context())


def check(routes: list[Route], route: Route, send: SecondCopy) -> None:
    """Runs `LAG_S` after the oldest publish waiting on `route` went, then every `RECHECK_S`
    while it lags: sets the route aside and sends every waiting publish again on the other
    route if that one is demonstrably answering faster."""
    route.timer = None
    if not route.waiting:
        return
    now, oldest = route.clock(), route.oldest()
    if now - oldest < LAG_S:
        watch(routes, route, oldest + LAG_S - now, send)
        return
    if route.lagging(LAG_S, now):
        other = faster_than(routes, route, oldest, now)
        if other is not None:
            if now >= route.set_aside_until:  # one line per episode, not per check
                log.warning("broker route not confirming: new publishes go through the other route first",
                            route=route.name, other=other.name, waited_s=round(now - oldest, 2),
                            waiting=len(route.waiting), set_aside_s=SUSPECT_S)
            route.set_aside_until = now + SUSPECT_S
            hedge_all(route, other, send)
    watch(routes, route, RECHECK_S, send)


def faster_than(routes: list[Route], route: Route, since: float, now: float) -> Route | None:
    """Another route that confirmed something sent after `since`, and is not lagging itself."""
    for other in routes:
        if (other is not route and other.answering(STALE_AFTER_S) and now >= other.set_aside_until
                and other.last_ok_sent > since and not other.lagging(LAG_S, now)):
            return other
    return None


def hedge_all(route: Route, other: Route, send: SecondCopy) -> None:
    """A second copy of each waiting publish that allows one, in the order they first went:
    tasks start in the order they are created, and nothing newer goes to `other` while one
    of them is not yet confirmed or finally failed (`Route.starting`)."""
    for waiting in route.waiting:
        if waiting.message is None or waiting.hedge is not None:
            continue
        other.starting.add(waiting)
        other.started.clear()
        waiting.hedge = asyncio.create_task(send(waiting, other))
        waiting.hedge.add_done_callback(functools.partial(second_copy_ended, other, waiting))  # also if never started
