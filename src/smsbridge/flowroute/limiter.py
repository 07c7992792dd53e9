"""The per-account send limiter: no window of `window_s` ever holds more than `limit` attempts.

Flowroute counts attempts, rejected ones included, per account in 1000 ms windows (§7), at the
moment each request reaches it. We cannot see that moment, only that it lies between the start
of our request and the end of its answer (or of our giving up on it). So an attempt counts here
from its start until one window after its end: while in flight it occupies a slot, and an
attempt may start only when the `limit`-th most recent one (in flight ones included) ended at
least a window ago. Network delay and scheduling delay on a busy host then shift the counted
moment inside [start, end] but can never push two attempts closer than Flowroute measures them;
they only lower our rate by the round trip. Recording the slot when it is granted (as before)
left only the margin to absorb the delay. An MMS takes from both the SMS and the MMS budget,
because both are the same endpoint.

Taking the account queue over from a dispatcher that died (`assume_busy`): the new dispatcher
does not know what the old one sent, so it acts as if the full budget had just been used by
attempts ending `TAKEOVER_GRACE_S` from now, and waits a window after that. This is correct
under a crash: the broker hands the queue over only once the old consumer is gone, so every
attempt of the old one had already left it; what can still be on its way is bytes in the
network, which the grace covers. A shared record of attempt times in the ledger was the other
option; it is weaker exactly here: a dispatcher killed mid-request never writes its attempt's
end, so the record would have to guess it anyway, it would compare the clocks of two hosts to
within the margin, and it adds a write per attempt. What neither covers is a dispatcher that is
cut off from the broker but alive and still sending what it had prefetched (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
TAKEOVER_GRACE_S = 0.25  # after a takeover: how late a dead dispatcher's last request may still arrive


class SlidingWindow:
    """Pure bookkeeping: when may the next attempt start?"""

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window_s = window_s
        self.in_flight = 0
        self._ended: deque[float] = deque(maxlen=limit)  # ends, oldest first (the clock only moves on)

    def wait_for(self, now: float) -> float | None:
        """Seconds until an attempt may start; None while only an attempt's end can free a slot."""
        free = self.limit - self.in_flight
        if free <= 0:
            return None
        if len(self._ended) < free:
            return 0.0
        return max(0.0, self._ended[-free] + self.window_s - now)

    def start(self) -> None:
        self.in_flight += 1

    def end(self, now: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self._ended.append(max(now, self._ended[-1]) if self._ended else now)

    def fill(self, ended_at: float) -> None:
        for _ in range(self.limit):
            self._ended.append(max(ended_at, self._ended[-1]) if self._ended else ended_at)


class AccountLimiter:
    def __init__(self, sms_per_window: int, mms_per_window: int, *, window_s: float = 1.0,
                 margin_s: float = 0.01, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.sms = SlidingWindow(sms_per_window, window_s + margin_s)
        self.mms = SlidingWindow(mms_per_window, window_s + margin_s)
        self._clock = clock
        self._sleep = sleep
        self._turn = asyncio.Lock()  # FIFO: callers get their turn in arrival order
        self._ended = asyncio.Event()  # set whenever an attempt ends
        self._paused_until = 0.0
        self.waited_s = 0.0

    @asynccontextmanager
    async def attempt(self, *, is_mms: bool) -> AsyncIterator[float]:
        """Hold a slot for one request to Flowroute, from before it is sent until its answer (or
        failure, or cancellation) is in; yields how long we waited for the slot."""
        waited = await self.acquire(is_mms=is_mms)
        try:
            yield waited
        finally:
            self.release(is_mms=is_mms)

    async def acquire(self, *, is_mms: bool) -> float:
        """Wait for a slot and take it; return how long we waited. Pair with `release`."""
        windows = self._windows(is_mms)
        started = self._clock()
        async with self._turn:
            while True:
                now = self._clock()
                waits = [w.wait_for(now) for w in windows]
                if None in waits:  # every slot is in flight: only an end can free one
                    self._ended.clear()
                    await self._ended.wait()
                    continue
                delay = max([self._paused_until - now, *(w for w in waits if w is not None)])
                if delay <= 0:
                    for window in windows:
                        window.start()
                    waited = max(0.0, now - started)
                    self.waited_s += waited
                    return waited
                await self._sleep(delay)

    def release(self, *, is_mms: bool) -> None:
        """The attempt is over (answered, failed or abandoned): its window starts now."""
        now = self._clock()
        for window in self._windows(is_mms):
            window.end(now)
        self._ended.set()

    def _windows(self, is_mms: bool) -> tuple[SlidingWindow, ...]:
        return (self.sms, self.mms) if is_mms else (self.sms,)

    def pause(self, seconds: float) -> None:
        """Flowroute said 429: nobody on this account sends for `seconds`."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def assume_busy(self, grace_s: float = TAKEOVER_GRACE_S) -> None:
        """Act as if the full budget was used by attempts ending `grace_s` from now (a previous
        dispatcher may have used it, and its last requests may still be on the way)."""
        ended_at = self._clock() + grace_s
        self.sms.fill(ended_at)
        self.mms.fill(ended_at)
