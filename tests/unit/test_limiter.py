"""The limiter's guarantee, on a fake clock: no 1000 ms window ever holds more than the limit,
counted where Flowroute counts, at the moment a request reaches it (anywhere between our send and
its answer)."""

from __future__ import annotations

import asyncio
import random

import pytest

from smsbridge.flowroute.limiter import AccountLimiter, PastAttempt


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
        async with limiter.attempt(is_mms=False):
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
        async with limiter.attempt(is_mms=is_mms):
            (mms if is_mms else sms).append(clock.now)
    assert max_in_window(mms) <= 1
    assert max_in_window(sms + mms) <= 5


async def test_concurrent_callers_are_served_in_arrival_order_within_the_limit() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    order: list[int] = []
    times: list[float] = []

    async def send(n: int) -> None:
        async with limiter.attempt(is_mms=False):
            order.append(n)
            times.append(clock.now)

    await asyncio.gather(*(send(n) for n in range(30)))
    assert order == list(range(30))
    assert max_in_window(times) == 5


async def test_pause_after_429_holds_everybody() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, clock=clock, sleep=clock.sleep)
    async with limiter.attempt(is_mms=False):
        pass
    limiter.pause(2.0)
    started = clock.now
    async with limiter.attempt(is_mms=False) as waited:
        pass
    assert clock.now - started >= 2.0 and waited >= 2.0


async def test_a_takeover_with_every_slot_maybe_in_flight_waits_a_full_window_and_the_grace() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    limiter.resume([PastAttempt(None)] * 5, grace_s=0.25)
    started = clock.now
    async with limiter.attempt(is_mms=False):
        assert clock.now - started >= 1.25


async def test_a_takeover_after_answered_attempts_goes_on_at_their_pace() -> None:
    # The old dispatcher's five attempts ended 0.2, 0.4 ... 1.0 s ago: the oldest frees its slot
    # a window (and the skew) after its end, not a full window after the takeover as before.
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    limiter.resume([PastAttempt(0.2 * n) for n in range(1, 6)], skew_s=0.05)
    started = clock.now
    async with limiter.attempt(is_mms=False):
        assert clock.now - started == pytest.approx(0.05)


async def test_a_takeover_holds_only_the_slot_of_the_attempt_in_flight() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    limiter.resume([PastAttempt(None), *(PastAttempt(0.3 + 0.2 * n) for n in range(4))], grace_s=0.25, skew_s=0.0)
    started, starts = clock.now, []
    for _ in range(2):
        async with limiter.attempt(is_mms=False):
            starts.append(clock.now - started)
    # the attempt that ended 0.9 s ago frees a slot 0.1 s in, the next (0.7 s ago) at 0.3 s
    assert starts == [pytest.approx(0.1), pytest.approx(0.3)]


async def test_an_mms_in_flight_at_a_takeover_holds_the_mms_budget() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    limiter.resume([PastAttempt(None, is_mms=True)], grace_s=0.25)
    started = clock.now
    async with limiter.attempt(is_mms=False):
        assert clock.now == started  # SMS budget: four slots left
    async with limiter.attempt(is_mms=True):
        assert clock.now - started >= 1.25


@pytest.mark.parametrize("seed", range(30))
async def test_a_takeover_from_what_the_ledger_shows_never_puts_six_in_a_second(seed: int) -> None:
    # A dispatcher sends at the limit (requests reach Flowroute 0-50 ms late, answers take up to
    # 20 ms) and is killed at a random moment, maybe mid-request; the ledger shows each answered
    # attempt written some milliseconds after its answer, and the one in flight as "sending".
    # Its request still reaches Flowroute within the grace. The next dispatcher resumes from that.
    clock, rng, arrivals = FakeClock(), random.Random(seed), []
    old = AccountLimiter(5, 1, clock=clock, sleep=clock.sleep)
    kill_at = clock.now + rng.uniform(2, 4)
    recorded: list[float] = []
    in_flight = False
    while clock.now < kill_at:
        await old.acquire(is_mms=False)
        delay, answer = rng.uniform(0, 0.05), rng.uniform(0, 0.02)
        if clock.now + delay + answer > kill_at:  # killed with this one on its way
            arrivals.append(clock.now + delay + rng.uniform(0, 0.2))
            in_flight = True
            break
        await clock.sleep(delay)
        arrivals.append(clock.now)
        await clock.sleep(answer)
        old.release(is_mms=False)
        recorded.append(clock.now + rng.uniform(0, 0.01))  # the ledger write after the answer
    clock.now = max(clock.now, kill_at)
    new = AccountLimiter(5, 1, clock=clock, sleep=clock.sleep)
    # an answer not yet written at the kill leaves its message "sending": in flight, for all we know
    ledger = [PastAttempt(clock.now - at if at <= clock.now else None) for at in recorded]
    new.resume(ledger + ([PastAttempt(None)] if in_flight else []), skew_s=0.0)
    resumed = clock.now
    for _ in range(20):
        await reaching_flowroute(new, clock, rng, arrivals, delay_s=0.05, answer_s=0.02)
    assert max_in_window(arrivals) <= 5, seed
    first_after = min(t for t in arrivals if t >= resumed)
    unknown = in_flight or any(a.ended_ago_s is None for a in ledger)
    assert first_after - resumed <= (1.3 if unknown else 0.3)  # not a full window and the grace as before


async def reaching_flowroute(limiter: AccountLimiter, clock: FakeClock, rng: random.Random, arrivals: list[float],
                             *, delay_s: float, answer_s: float = 0.005, is_mms: bool = False) -> None:
    """One request: it reaches Flowroute 0 to `delay_s` after it is sent, and the answer takes
    0 to `answer_s` to come back."""
    async with limiter.attempt(is_mms=is_mms):
        await clock.sleep(rng.uniform(0, delay_s))
        arrivals.append(clock.now)
        await clock.sleep(rng.uniform(0, answer_s))


@pytest.mark.parametrize("delay_s", [0.05, 0.1])
async def test_network_delay_never_puts_six_attempts_in_a_second_at_flowroute(delay_s: float) -> None:
    # Before: the slot was recorded when granted, and only the 40 ms margin absorbed the delay
    # between the grant and Flowroute's count: with 0-100 ms of it, 8 attempts fell into one
    # 1000 ms window (on this fake clock; the issue saw 6 and 7 on a loaded host).
    for seed in range(20):
        clock, rng, arrivals = FakeClock(), random.Random(seed), []
        limiter = AccountLimiter(5, 1, clock=clock, sleep=clock.sleep)  # the default margin
        for _ in range(200):
            await reaching_flowroute(limiter, clock, rng, arrivals, delay_s=delay_s)
        assert max_in_window(arrivals) <= 5, seed
        rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        if delay_s <= 0.05:  # the delay costs rate, one round trip per five attempts
            assert rate >= 0.95 * 5, (seed, rate)


async def test_concurrent_slow_requests_hold_their_slot_until_answered() -> None:
    # Requests that take 1.5 s each, sent side by side: five in flight, the sixth waits for an
    # answer and a window after it, wherever in those 1.5 s Flowroute counted them.
    clock, rng, arrivals = FakeClock(), random.Random(3), []
    limiter = AccountLimiter(5, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    await asyncio.gather(*(reaching_flowroute(limiter, clock, rng, arrivals, delay_s=0.75, answer_s=0.75)
                           for _ in range(40)))
    assert len(arrivals) == 40 and max_in_window(arrivals) <= 5


async def test_a_failed_or_cancelled_request_gives_its_slot_back_after_a_window() -> None:
    clock = FakeClock()
    limiter = AccountLimiter(1, 1, margin_s=0.0, clock=clock, sleep=clock.sleep)
    try:
        async with limiter.attempt(is_mms=False):
            raise TimeoutError
    except TimeoutError:
        pass
    ended = clock.now
    async with limiter.attempt(is_mms=False):
        assert clock.now - ended >= 1.0
    assert limiter.sms.in_flight == 0
