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

Taking the account queue over from a dispatcher that died (`resume`): the new dispatcher
reads what the old one left in the ledger, where every attempt leaves a trace:
- an attempt starts only after its message is marked `sending` (committed before the request),
  and a lookup in Flowroute's list only after its message is touched (it is `sending` already);
- after the answer the message is written again (`accepted`, requeued or `failed`), so its
  `updated_at` is no earlier than the attempt's end;
- a message has at most one attempt a window back: its next attempt (after a 429, after a lookup
  that found nothing, after a retry) waits until the previous one ended a window and the clock
  skew ago (the dispatcher's `_resend_gap`), so a later write never hides an earlier end that still counts.
So an answered attempt counts from its message's `updated_at` (plus the clock skew between the
two hosts), and a message still `sending` (touched within the longest an attempt may run) is an
attempt that may still be on its way: it counts as ending `TAKEOVER_GRACE_S` from now, as the
whole budget did before. The broker hands the queue over only once the old consumer is gone, so
its requests have left it; bytes in the network are what the grace covers. Answered attempts
older than a window cost nothing; the usual takeover (killed between two sends) then goes on at
the pace the old dispatcher would have kept, and one killed mid-request holds one slot, not five.
Measured (`bench/run.py --only dispatch`, takeover with 0-50 ms jitter, shared 2-core VM): before,
0.924 of the limit with a 1.27 s pause; after, 0.961 and 0.945 with 1.00 and 1.08 s pauses, which
is the ordinary gap after a burst of five (the slots stay in step: five go, then a window).
The objections that first kept this out hold no more: an
attempt killed mid-request has no end in the ledger, and it is the only one we hold for (as in
flight); the two hosts' clocks are compared to within `CLOCK_SKEW_S`, added to every end; and it
adds no write per attempt (`sending` and the answer are written anyway), only a read per
takeover and, on the rare lookup, a touch. What this does not cover is a dispatcher that is cut off
from the broker but alive and still sending what it had prefetched (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
TAKEOVER_GRACE_S = 0.25  # after a takeover: how late a dead dispatcher's last request may still arrive
CLOCK_SKEW_S = 0.05  # dispatcher hosts' clocks agree within this (NTP on one network does better)


@dataclass(frozen=True)
class PastAttempt:
    """An attempt a previous dispatcher made, as the ledger shows it."""

    ended_ago_s: float | None  # how long ago its end was recorded; None: no end recorded (maybe in flight)
    is_mms: bool = False


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

    def add(self, ends: list[float]) -> None:
        """Attempts that ended at `ends` (another dispatcher's): merged with ours, the newest kept."""
        merged = sorted([*self._ended, *ends])[-self.limit:]
        self._ended.clear()
        self._ended.extend(merged)


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

    def abandon(self, *, is_mms: bool) -> None:
        """The slot was taken but nothing was sent (the message turned out not to need a send):
        free it without counting an attempt."""
        for window in self._windows(is_mms):
            window.in_flight = max(0, window.in_flight - 1)
        self._ended.set()

    def _windows(self, is_mms: bool) -> tuple[SlidingWindow, ...]:
        return (self.sms, self.mms) if is_mms else (self.sms,)

    def pause(self, seconds: float) -> None:
        """Flowroute said 429: nobody on this account sends for `seconds`."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def resume(self, attempts: list[PastAttempt], *, grace_s: float = TAKEOVER_GRACE_S,
               skew_s: float = CLOCK_SKEW_S) -> None:
        """Take over from a dispatcher that is gone: its attempts count as ended when the ledger
        says (plus the skew), those with no recorded end as ending `grace_s` from now."""
        now = self._clock()
        ends = [(now + grace_s if a.ended_ago_s is None else now - a.ended_ago_s + skew_s, a.is_mms)
                for a in attempts]
        self.sms.add([end for end, _ in ends])
        self.mms.add([end for end, is_mms in ends if is_mms])
