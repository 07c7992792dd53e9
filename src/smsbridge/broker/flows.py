"""The publishes a process exists to make, watched one destination at a time for readiness.

Why per destination: a quorum queue whose leader sits on a node cut off from its cluster commits
nothing, through any node, until the others declare that node down (up to `net_ticktime`; README,
"Still missed"), while every other queue goes on confirming on the same channels. Per route, the
stuck publishes then look like a busy broker's: something is confirmed after they went. So the
publisher also keeps, for each destination a role's readiness rests on, the publishes waiting for
it (from the caller's first attempt to its answer, second copies and retries included), when one
was last confirmed, and when they last failed for good. A destination is *stalled* (`Flow.stalled`)
when one of its publishes has waited `after_s` with none of its publishes confirmed since that
one went (whatever older ones still wait: confirms can come out of order, and one confirmed just
after the cut must not hide the publishes sent after it), or its publishes have failed for good
(refused, or unconfirmed until their deadline) for `after_s`, lately too, with none confirmed
since the first failure. Ready again at its next
confirm, or `after_s` after its last failure once nothing waits (the traffic may have stopped
because it was refused: the next publishes find out).

Which destinations (`essential`): what the role is for, where a client waits on the confirm or
the role's work stops without it. The receiver: webhooks (the inbound stage) and the relay API's
outbound requests; the SIP intake: outbound requests; the inbound stage: deliveries; the outbound
stage: the dispatch queues. Not the dispatcher's statuses (its work is Flowroute's answer; a status
confirmed late, 1-5 s on a busy broker in `make bench`, waits up to 30 s and is not work lost) nor
the delivery stage's retries and fallbacks.

The threshold is the liveness probe's 3 s (`broker/liveness.py`). A busy broker confirms late
but keeps confirming: as long as some publish to a destination is confirmed within `after_s` of
the sending of each one still waiting, it is not stalled, however late each confirm comes. Measured
on the shared 2-core host with 4,000 publishes to one quorum queue always in flight: confirms
up to 3.5 s late, but never more than 0.3 s with one waiting and none confirmed since it went
(docs/operations.md has the figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from smsbridge.broker import names

Destination = tuple[str, str | None]  # exchange, routing key (None: every key of that exchange)


class Flow:
    """The publishes to one destination: those waiting, the latest confirm, the failures."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name  # exchange and routing key: no tenant data beyond a configured name
        self.clock = clock
        self.waiting: dict[object, float] = {}  # a token per publish -> when it went; oldest first
        self.last_ok = float("-inf")  # the latest confirm of a publish to it
        self.failing_since = float("inf")  # the first of the failures with none confirmed since
        self.last_failed = float("-inf")

    def went(self) -> object:
        token = object()
        self.waiting[token] = self.clock()
        return token

    def ended(self, token: object, *, confirmed: bool | None) -> None:
        """`confirmed`: True, the broker took it (or answered it unroutable); False, it failed for
        good; None, the caller gave up on it (cancelled): says nothing about the destination."""
        self.waiting.pop(token, None)
        now = self.clock()
        if confirmed:
            self.last_ok, self.failing_since = now, float("inf")
        elif confirmed is False:
            self.failing_since, self.last_failed = min(self.failing_since, now), now

    def unconfirmed_s(self, now: float) -> float:
        """How long the oldest publish sent since the latest confirm has waited (0: none waits)."""
        for sent in self.waiting.values():  # oldest first
            if sent > self.last_ok:
                return now - sent
            # Sent before the latest confirm and still waiting: confirms may come out of order (a
            # publish that reached its queue just before the cut), so it excuses nothing sent later.
        return 0.0

    def stalled(self, after_s: float, now: float) -> bool:
        if self.unconfirmed_s(now) >= after_s:
            return True
        return now - self.failing_since >= after_s and now - self.last_failed <= after_s


class Flows:
    """The watched destinations of one publisher; `get` is a dictionary look-up per publish."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._flows: dict[Destination, Flow] = {}
        self._clock = clock

    def watch(self, destinations: Iterable[Destination]) -> None:
        for exchange, key in destinations:
            name = exchange if key is None else f"{exchange}/{key}"
            self._flows.setdefault((exchange, key), Flow(name, self._clock))

    def get(self, exchange: str, routing_key: str) -> Flow | None:
        if not self._flows:
            return None
        return self._flows.get((exchange, routing_key)) or self._flows.get((exchange, None))

    def stalled(self, after_s: float) -> list[str]:
        """The names of the destinations stalled now."""
        now = self._clock()
        return [flow.name for flow in self._flows.values() if flow.stalled(after_s, now)]

    def unconfirmed_s(self) -> dict[str, float]:
        """For the log: per destination, how long its publishes have gone without a confirm."""
        now = self._clock()
        return {flow.name: round(flow.unconfirmed_s(now), 2) for flow in self._flows.values()}


def essential(prefix: str, roles: Iterable[str], accounts: Iterable[str]) -> list[Destination]:
    """The destinations readiness watches for a process running `roles` (module docstring)."""
    stage = names.work_exchange(prefix)
    requests: Destination = (names.requests_exchange(prefix), None)
    per_role: dict[str, list[Destination]] = {
        "receiver": [(stage, names.stage_queue(prefix, "inbound")), requests],
        "sip": [requests],
        "inbound": [(stage, names.stage_queue(prefix, "delivery"))],
        "outbound": [(stage, names.stage_queue(prefix, names.dispatch_stage(a))) for a in accounts],
    }
    found: list[Destination] = []
    for role in roles:
        found += [d for d in per_role.get(role, []) if d not in found]
    return found
