"""Texts the broker sent a lost consumer come back late: hold new ones until they can have.

A quorum queue hands a consumer up to its prefetch of messages and counts them as the
consumer's until it acks them or the queue's leader sees the consumer gone. When the node the
inbound stage was connected to is cut off from the leader's node (a partition), messages the
leader sent over the cut link never arrive; the stage's connection closes when that node
pauses itself (`pause_minority`) and comes back on another node at once, and is given the
*later* webhooks. The leader hands the lost ones back only when it declares the cut-off node
down, after `net_ticktime` (seen in `make faults`: 1.2 s after the stage was back; at most about
half of `net_ticktime`, since each side declares the other down 0.75-1.25 × `net_ticktime`
after the cut). Recorded after later texts of their conversations had reached the PBX, they
arrived out of order (faults/README.md, "Texts in flight to a consumer on the cut-off node").

So for `hold_s` after such a reconnection the inbound stage still records every text at once,
in its place by arrival (`ledger/order.py`), but publishes the texts that became due through
the delay queue, to reach the delivery stage when the hold ends. A text handed back within the
hold is recorded before any later text of its conversation is delivered: the later one, no
longer its conversation's head when it arrives, is set aside by the delivery stage and comes
after (`Turn.WAIT`). Durable throughout: a crash loses nothing the broker confirmed.

Not every lost connection needs it. A connection that ended in a TCP reset or end of file was
closed by the node's operating system: its process is gone (killed, crashed), the other nodes
saw their links to it close at the same moment and have already handed its consumers'
messages back. Anything else (the node closing the connection as it pauses or stops, missed
heartbeats, a timeout) holds. With one broker node there is no one to hand anything back late,
and no hold. What it does not cover: another inbound process, not connected to the cut-off
node, takes later texts without holding (docs/operations.md, "Several hosts").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiormq.exceptions
import structlog

log = structlog.get_logger("smsbridge.broker")

# What the node's operating system does to a process's sockets when the process is gone.
_GONE = (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError, EOFError)


def process_gone(exc: BaseException | None) -> bool:
    """Whether a connection's end says the node's process is gone (see the module's docstring)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _GONE):
            return True
        if isinstance(exc, aiormq.exceptions.ConnectionClosed):  # the node said goodbye: it is alive
            return False
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class HandBack:
    """When texts due must wait for what a lost consumer may have been sent (`remaining`)."""

    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self._clock = clock
        self._until = 0.0
        self._down = False  # lost, not back yet
        self._lost = False  # ... and lost in a way that holds
        self._reason = ""

    def closed(self, exc: BaseException | None) -> None:
        """The connection the stage consumes on ended with `exc` (None: we closed it). aio-pika
        says so for each failed attempt to reconnect too: only the loss itself counts. The hold
        starts at once: the consumer may be given messages before `reconnected` is called."""
        if exc is None or self._down:
            return
        self._down = True
        if self.hold_s <= 0:
            return
        self._reason = repr(exc)
        if process_gone(exc):
            log.info("inbound stage's connection lost with its node's process: nothing it was sent can "
                     "come back late, texts go on at once", reason=self._reason)
            return
        self._lost = True

    def reconnected(self) -> None:
        """The stage consumes again (aio-pika calls this once its consumer is restored)."""
        self._down = False
        if not self._lost:
            return
        self._lost = False
        self._until = self._clock() + self.hold_s
        log.warning("inbound stage reconnected: texts it routes in the next hold_s wait until then, so that "
                    "any the broker had sent the lost connection are delivered first", hold_s=self.hold_s,
                    reason=self._reason)

    def remaining(self) -> float:
        """Seconds texts that become due now must wait (0: publish them at once)."""
        if self._lost:
            return self.hold_s
        return max(0.0, self._until - self._clock())
