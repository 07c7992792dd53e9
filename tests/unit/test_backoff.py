from __future__ import annotations

import pytest

from smsbridge.backoff import compute_backoff
from smsbridge.broker import names
from smsbridge.broker.consumer import Attempt, retry_decision
from smsbridge.config import RetryPolicy


@pytest.mark.parametrize(("attempt", "low", "high"), [(0, 0.5, 1.0), (1, 1.0, 2.0), (3, 4.0, 8.0), (10, 30.0, 60.0)])
def test_exponential_within_jitter_bounds(attempt: int, low: float, high: float) -> None:
    assert compute_backoff(attempt, base=1.0, cap=60.0, rand=lambda: 0.0) == low
    assert compute_backoff(attempt, base=1.0, cap=60.0, rand=lambda: 1.0) == high


def test_jitter_spreads_retries() -> None:
    delays = {compute_backoff(4, base=1.0, cap=60.0, rand=lambda v=v: v / 10) for v in range(10)}
    assert len(delays) == 10


def test_requested_delay_wins_even_above_the_cap() -> None:
    assert compute_backoff(0, base=1.0, cap=5.0, requested=30.0) == 30.0
    assert compute_backoff(5, base=1.0, cap=60.0, requested=0.0) == 0.0


POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=10.0, max_age_s=100.0)


def test_retry_decision_gives_a_delay_while_attempts_remain() -> None:
    decision = retry_decision(Attempt(0, 0), POLICY, now=0, requested=None, rand=lambda: 1.0)
    assert decision == 1.0


def test_retry_decision_gives_up_after_max_attempts() -> None:
    decision = retry_decision(Attempt(2, 0), POLICY, now=0, requested=None, rand=lambda: 1.0)
    assert decision == "gave up after 3 attempts"


def test_retry_decision_gives_up_when_the_message_would_be_too_old() -> None:
    decision = retry_decision(Attempt(0, 0), POLICY, now=99_500, requested=None, rand=lambda: 1.0)
    assert isinstance(decision, str) and "maximum age" in decision


def test_requested_delays_are_clamped_to_the_longest_tier() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_s=1e9)
    assert retry_decision(Attempt(0, 0), policy, now=0, requested=1e6, rand=lambda: 0.5) == names.MAX_DELAY_S


@pytest.mark.parametrize(("seconds", "tier"), [(0, 0), (0.2, 0), (1.99, 0), (2, 1), (3.9, 1), (4, 2), (300, 8),
                                               (1e9, names.MAX_TIER)])
def test_delay_tiers(seconds: float, tier: int) -> None:
    assert names.delay_tier(seconds) == tier


def test_attempt_from_headers_tolerates_missing_or_odd_values() -> None:
    assert Attempt.from_headers({names.H_ATTEMPT: 3, names.H_FIRST_SEEN: 1000}) == Attempt(3, 1000)
    assert Attempt.from_headers({names.H_ATTEMPT: "x"}).number == 0


def test_delay_tier_header_is_one_a_headers_exchange_matches_on() -> None:
    # RabbitMQ's headers exchange skips x- headers when matching: such a binding matches everything.
    assert not names.H_DELAY_TIER.lower().startswith("x-")


@pytest.mark.parametrize("attempt", [1023, 1024, 5000, 10**9])
def test_no_overflow_however_many_attempts(attempt: int) -> None:
    # connect(attempts=None) counts attempts for ever: 2 ** 1024 used to raise OverflowError.
    assert compute_backoff(attempt, base=0.5, cap=10.0, rand=lambda: 1.0) == 10.0
    assert compute_backoff(attempt, base=0.5, cap=10.0, rand=lambda: 0.0) == 5.0


def test_cap_below_base_is_the_cap() -> None:
    assert compute_backoff(50, base=20.0, cap=10.0, rand=lambda: 1.0) == 10.0


def test_a_try_that_was_not_an_attempt_never_uses_up_the_attempts_but_still_ages_out() -> None:
    """Another worker holding the text (a claim found busy) is not an attempt at it."""
    assert retry_decision(Attempt(2, 0), POLICY, now=0, requested=None, rand=lambda: 1.0, counted=False) == 4.0
    decision = retry_decision(Attempt(2, 0), POLICY, now=99_500, requested=None, rand=lambda: 1.0, counted=False)
    assert isinstance(decision, str) and "maximum age" in decision
