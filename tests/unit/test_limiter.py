"""The limiter's guarantee, on a fake clock: no 1000 ms window ever holds more than the limit."""

from __future__ import annotations

import asyncio
import random

from smsbridge.flowroute.limiter import AccountLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(sorted(times)):
        while t - sorted(times)[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_sms_never_more_than_five_in_any_second_and_rate_close_to_the_limit() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.04, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(100):
        await limiter.acquire(is_mms=False)
        times.append(clock.now)
    assert max_in_window(times) == 5
    rate = len(times) / (times[-1] - times[0] + 1.0)  # attempts over the time they occupy
    assert 4.7 < rate <= 5.0


async def test_mms_take_from_both_budgets() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    rng = random.Random(7)
    sms, mms = [], []
    for _ in range(200):
        is_mms = rng.random() < 0.3
        await limiter.acquire(is_mms=is_mms)
        (mms if is_mms else sms).append(clock.now)
    assert max_in_window(mms) <= 1
    assert max_in_window(sms + mms) <= 5


async def test_concurrent_callers_are_served_in_arrival_order_within_the_limit() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    order: list[int] = []
    times: list[float] = []

    async def send(n: int) -> None:
        await limiter.acquire(is_mms=False)
        order.append(n)
        times.append(clock.now)

    await asyncio.gather(*(send(n) for n in range(30)))
    assert order == list(range(30))
    assert max_in_window(times) == 5


async def test_pause_after_429_holds_everybody() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, clock=clock, sleep=clock.sleep)
    await limiter.acquire(is_mms=False)
    limiter.pause(2.0)
    started = clock.now
    waited = await limiter.acquire(is_mms=False)
    assert clock.now - started >= 2.0 and waited >= 2.0


async def test_after_a_takeover_the_first_send_waits_a_full_window() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    limiter.assume_busy()
    started = clock.now
    await limiter.acquire(is_mms=False)
    assert clock.now - started >= 1.0
