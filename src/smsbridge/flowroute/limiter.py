"""The per-account send limiter: no window of `window_s` ever holds more than `limit` attempts.

Flowroute counts attempts, rejected ones included, per account in 1000 ms windows (§7), so we
space attempts: an attempt may start only when the `limit`-th most recent one is at least
`window_s` old. A small safety margin covers clock and network jitter. An MMS takes from both
the SMS and the MMS budget, because both are the same endpoint.

After (re)subscribing, a dispatcher cannot know what a dispatcher that just died sent in its
last second, so the first send waits one full window (`assume_busy`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SlidingWindow:
    """Pure bookkeeping: when may the next attempt start?"""

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window_s = window_s
        self._recent: deque[float] = deque(maxlen=limit)

    def wait_for(self, now: float) -> float:
        if len(self._recent) < self.limit:
            return 0.0
        return max(0.0, self._recent[0] + self.window_s - now)

    def record(self, now: float) -> None:
        self._recent.append(now)

    def fill(self, now: float) -> None:
        for _ in range(self.limit):
            self._recent.append(now)


class AccountLimiter:
    def __init__(self, sms_per_window: int, mms_per_window: int, *, window_s: float = 1.0,
                 margin_s: float = 0.04, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.sms = SlidingWindow(sms_per_window, window_s + margin_s)
        self.mms = SlidingWindow(mms_per_window, window_s + margin_s)
        self._clock = clock
        self._sleep = sleep
        self._turn = asyncio.Lock()  # FIFO: callers get their turn in arrival order
        self._paused_until = 0.0
        self.waited_s = 0.0

    async def acquire(self, *, is_mms: bool) -> float:
        """Wait for a slot and claim it; return how long we waited."""
        windows = (self.sms, self.mms) if is_mms else (self.sms,)
        waited = 0.0
        async with self._turn:
            while True:
                now = self._clock()
                delay = max([self._paused_until - now] + [w.wait_for(now) for w in windows])
                if delay <= 0:
                    for window in windows:
                        window.record(now)
                    self.waited_s += waited
                    return waited
                await self._sleep(delay)
                waited += delay

    def pause(self, seconds: float) -> None:
        """Flowroute said 429: nobody on this account sends for `seconds`."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def assume_busy(self) -> None:
        """Act as if the full budget was just used (a previous dispatcher may have used it)."""
        now = self._clock()
        self.sms.fill(now)
        self.mms.fill(now)
