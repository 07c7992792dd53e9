"""Publishes to one destination kept in their order while the broker refuses them.

While a dead node's queue leaders are re-elected the broker nacks what goes to them, and the
publisher sends a refused publish again a little later (`broker/publisher.py`). A newer publish
to the same queue could go through in that pause and be stored first: in `make faults` two
webhooks of one conversation reached the inbound queue in the wrong order that way. So once a
publish to a destination (exchange and routing key) was not confirmed on some route (a nack, a
dropped connection, no confirm in time, no route connected), that destination gets a *line*:
that publish and every later one to the same destination wait in it, in the order they were
first published, and only the head is sent (on its next route at once, or after a pause once
every route failed). A publish joining the line wakes the head from its pause: traffic is
arriving, so the broker is worth asking again now, as the newer publish itself would have.

Once the head is confirmed the broker takes publishes there again, so the line ends and every
publish in it goes at once, in their order: released in sequence, they reach the same route's
channel in that order, and AMQP keeps a channel's order. (Released one at a time, a busy
destination would be held to one publish per confirm round trip long after the broker
recovered.) One refused again starts a new line. When the head finally fails instead (its
deadline, its caller gone), the next in line becomes the head.

Publishes already on their way when the line forms are not held back: AMQP keeps order only on
one channel, and a publish in flight cannot be recalled. A publish that waits in the line past its
deadline fails like any unconfirmed publish (`RouteDown`), and the caller's client resends. A
line's start and end are logged (destination, how many publishes it held, how long, how it
ended): what an operator sees of a leader's election besides the nacks.
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

    __slots__ = ("seq", "turn", "released")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.turn = asyncio.Event()  # set when it heads the line, or the line ended
        self.released = False  # the line ended with its head confirmed: go now

    def __lt__(self, other: Ticket) -> bool:
        return self.seq < other.seq


class Line:
    """The publishes to one destination behind a refused one, oldest first."""

    __slots__ = ("tickets", "wake", "since", "held")

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.wake = asyncio.Event()  # the head need not finish its pause: a newer publish joined
        self.since = time.monotonic()
        self.held = 0  # publishes that were in it, for the log line when it ends

    def heads(self, ticket: Ticket) -> bool:
        return bool(self.tickets) and self.tickets[0] is ticket


class Lines:
    """Every destination's line; a destination without one takes publishes directly."""

    def __init__(self) -> None:
        self._lines: dict[Destination, Line] = {}
        self._seq = itertools.count()

    def place(self, destination: Destination) -> Place:
        """A new publish's place, numbered in publishing order; in the line at once if there is one."""
        place = Place(self, destination, next(self._seq))
        if destination in self._lines:
            place.join()
        return place

    def holding(self, destination: Destination) -> bool:
        """A refused publish to `destination` is still waiting: newer ones go behind it."""
        return destination in self._lines

    def waiting(self, destination: Destination) -> int:
        """How many publishes wait in the destination's line (0: none)."""
        line = self._lines.get(destination)
        return 0 if line is None else len(line.tickets)

    def join(self, destination: Destination, ticket: Ticket) -> Line:
        """Put `ticket` in the destination's line (started if there is none) by publishing order."""
        line = self._lines.get(destination)
        if line is None:
            line = self._lines[destination] = Line()
            log.info("publish not confirmed: later ones to its destination wait behind it",
                     exchange=destination[0], routing_key=destination[1])
        line.held += 1
        bisect.insort(line.tickets, ticket)
        if not line.heads(ticket):
            line.wake.set()  # the head tries again now; and a head displaced by an older one hears of it
        line.tickets[0].turn.set()
        return line

    def leave(self, destination: Destination, ticket: Ticket, *, confirmed: bool) -> None:
        """`ticket`'s publish is done. Confirmed at the head: the line ends and everyone in it goes,
        in order. Otherwise (given up, cancelled) the next one heads the line."""
        line = self._lines.get(destination)
        if line is None or ticket not in line.tickets:
            return
        if confirmed and line.heads(ticket):
            self._end(destination, line, "head confirmed")
            return
        line.tickets.remove(ticket)
        if not line.tickets:
            self._end(destination, line, "gave up")
            return
        line.tickets[0].turn.set()
        line.wake.set()  # the new head may be in its pause

    def _end(self, destination: Destination, line: Line, how: str) -> None:
        del self._lines[destination]
        for waiting in line.tickets:  # in publishing order: they resume in the order they are set
            waiting.released = True
            waiting.turn.set()
        line.wake.set()
        log.info("line of unconfirmed publishes ended", exchange=destination[0], routing_key=destination[1],
                 how=how, publishes=line.held, waited_s=round(time.monotonic() - line.since, 3))


class Place:
    """One publish's place among the publishes to its destination: outside any line until it is
    not confirmed somewhere (or an older one waits), then in line by publishing order until the
    line ends."""

    __slots__ = ("lines", "destination", "seq", "ticket", "line")

    def __init__(self, lines: Lines, destination: Destination, seq: int) -> None:
        self.lines, self.destination, self.seq = lines, destination, seq
        self.ticket: Ticket | None = None
        self.line: Line | None = None

    def join(self) -> None:
        """In line from now on, if not already (an older publish refused late goes ahead)."""
        if self.ticket is None:
            self.ticket = Ticket(self.seq)
            self.line = self.lines.join(self.destination, self.ticket)

    def heads(self) -> bool:
        """In no line, or at the head of one: may be sent now."""
        return self.line is None or self.ticket is None or self.line.heads(self.ticket)

    async def turn(self, deadline: float) -> bool:
        """Wait until this publish may be sent; False if the deadline came first. The head's wake
        flag is cleared here, before its attempt: a newcomer joining during it shortens its next pause."""
        while self.ticket is not None and self.line is not None:
            if self.ticket.released:  # the line ended: a free publish again
                self.ticket = self.line = None
                break
            if self.line.heads(self.ticket):
                self.line.wake.clear()
                break
            self.ticket.turn.clear()
            if not await _set_within(self.ticket.turn, deadline - time.monotonic()):
                return False
        return time.monotonic() < deadline

    async def pause(self, seconds: float) -> None:
        """The head's pause before it is sent again, cut short when a newer publish joins (or the
        line changes under it)."""
        if self.line is None:
            await asyncio.sleep(seconds)
            return
        await _set_within(self.line.wake, seconds)

    def leave(self, *, confirmed: bool) -> None:
        """Confirmed, finally failed or cancelled."""
        if self.ticket is not None:
            self.lines.leave(self.destination, self.ticket, confirmed=confirmed)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`. Not `asyncio.wait_for`: on Python 3.11 it swallows
    a cancellation that comes just as the event is set, and the publish would go on for its caller
    gone (a test here caught that)."""
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
        return True
    except TimeoutError:
        return False
