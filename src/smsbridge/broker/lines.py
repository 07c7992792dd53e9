"""Publishes to one destination kept in their order while the broker refuses them.

While a dead node's queue leaders are re-elected the broker nacks what goes to them, and the
publisher sends a refused publish again a little later (`broker/publisher.py`). A newer publish
to the same queue could go through in that pause and be stored first: in `make faults` two
webhooks of one conversation reached the inbound queue in the wrong order that way. So once the
broker has refused a publish (or lost it: a nack, a dropped connection, no confirm in time) on any
route, its destination gets a *line*: that publish and every later one to the same destination
wait in it, in the order they were first published, and only the head is sent (on its next route
at once, or after a pause once every route refused it). When the head is confirmed (or finally
fails, or its caller gives up), the next goes at once. A publish joining the line wakes the head
from its pause: traffic is arriving, so the broker is worth asking again now, as the newer
publish itself would have. A line's start and end are logged (queue name, how many publishes it
held, how long): what an operator sees of a leader's election besides the nacks.

Publishes already on their way when the line forms are not held back: AMQP keeps order only on
one channel, and a publish in flight cannot be recalled. A publish that waits in the line past its
deadline fails like any unconfirmed publish (`RouteDown`), and the caller's client resends.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time

import structlog

log = structlog.get_logger("smsbridge.broker")
Destination = tuple[str, str]  # exchange, routing key


class Ticket:
    """One publish's place in its destination's line."""

    __slots__ = ("seq", "turn")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.turn = asyncio.Event()  # set while this publish is at the head

    def __lt__(self, other: Ticket) -> bool:
        return self.seq < other.seq


class Line:
    """The refused publishes to one destination and those behind them, oldest first."""

    __slots__ = ("tickets", "wake", "since", "held")

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.wake = asyncio.Event()  # a newer publish joined: the head need not finish its pause
        self.since = time.monotonic()
        self.held = 0  # publishes that were in it, for the log line when it ends

    def head(self) -> Ticket | None:
        return self.tickets[0] if self.tickets else None


class Lines:
    """Every destination's line; a destination without one takes publishes directly."""

    def __init__(self) -> None:
        self._lines: dict[Destination, Line] = {}
        self._seq = itertools.count()

    def place(self, destination: Destination) -> Place:
        """A new publish's place, numbered in publishing order; in the line at once if there is one."""
        place = Place(self, destination, next(self._seq))
        if destination in self._lines:
            place.refused()
        return place

    def holding(self, destination: Destination) -> bool:
        """A refused publish to `destination` is still waiting: newer ones go behind it."""
        return destination in self._lines

    def line(self, destination: Destination) -> Line:
        line = self._lines.get(destination)
        if line is None:
            line = self._lines[destination] = Line()
            log.info("broker refused a publish: later ones to its queue wait behind it",
                     exchange=destination[0], routing_key=destination[1])
        return line

    def remove(self, destination: Destination, ticket: Ticket) -> None:
        line = self._lines.get(destination)
        if line is None or ticket not in line.tickets:
            return
        line.tickets.remove(ticket)
        head = line.head()
        if head is None:
            del self._lines[destination]
            log.info("refused publishes done, in their order", exchange=destination[0],
                     routing_key=destination[1], publishes=line.held,
                     waited_s=round(time.monotonic() - line.since, 3))
        else:
            head.turn.set()


class Place:
    """One publish's place among the publishes to its destination: outside any line until the
    broker refuses it (or an older refused one waits), then in line by publishing order."""

    __slots__ = ("lines", "destination", "seq", "ticket")

    def __init__(self, lines: Lines, destination: Destination, seq: int) -> None:
        self.lines, self.destination, self.seq = lines, destination, seq
        self.ticket: Ticket | None = None

    def refused(self) -> bool:
        """In line from now on (an older publish refused late goes ahead of newer ones); True if
        this publish heads its line, so may be sent again."""
        line = self.lines.line(self.destination)
        if self.ticket is None:
            self.ticket = Ticket(self.seq)
            line.held += 1
            bisect.insort(line.tickets, self.ticket)
            if line.tickets[0] is not self.ticket:
                line.wake.set()
            line.tickets[0].turn.set()
        return line.tickets[0] is self.ticket

    async def turn(self, deadline: float) -> bool:
        """Wait until this publish heads its line (at once if in none); False if the deadline came first."""
        if self.ticket is None:
            return True
        line = self.lines.line(self.destination)  # kept while the ticket is in it
        while line.tickets[0] is not self.ticket:
            self.ticket.turn.clear()
            try:
                await asyncio.wait_for(self.ticket.turn.wait(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return False
        return True

    async def pause(self, seconds: float) -> None:
        """The head's pause before it is sent again, cut short when a newer publish joins."""
        line = self.lines.line(self.destination)
        line.wake.clear()
        try:
            await asyncio.wait_for(line.wake.wait(), seconds)
        except TimeoutError:
            pass

    def leave(self) -> None:
        """Confirmed, finally failed or cancelled: the next one goes."""
        if self.ticket is not None:
            self.lines.remove(self.destination, self.ticket)
