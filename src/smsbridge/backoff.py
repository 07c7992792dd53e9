"""Retry delays: one pure function, exponential with jitter and a cap."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def compute_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    requested: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    The delay doubles each attempt up to `cap`; "equal jitter" keeps it within [d/2, d] so
    retries from many messages spread out but never collapse to zero. A delay the other side
    asked for (`requested`, e.g. Retry-After) wins over our own schedule.
    """
    if requested is not None and requested >= 0:
        return requested
    # The exponent stops growing once the delay has reached the cap: 2.0 ** 1024 overflows, and a
    # caller that retries for ever (connect(attempts=None)) gets there after about two hours.
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), _doublings_to(cap, base)))
    return float(ceiling / 2 + rand() * ceiling / 2)


def _doublings_to(cap: float, base: float) -> int:
    """How many doublings take `base` to `cap` or beyond (at least 0, at most 1000)."""
    if base <= 0 or cap <= base:
        return 0
    return min(1000, math.ceil(math.log2(cap / base)))


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header in seconds; an HTTP date or garbage gives None (use our own backoff)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
