"""connect(attempts=None) keeps trying, however long the broker stays away."""

from __future__ import annotations

import pytest

from smsbridge.connection import connect
from tests.support.ports import free_port


class Enough(Exception):
    pass


async def test_waits_for_ever_when_attempts_is_none() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:  # no real waiting: count the rounds instead
        delays.append(seconds)
        if len(delays) >= 1100:
            raise Enough

    # Nothing listens on this port: every round fails at once. Before the fix, round 1024 raised
    # OverflowError (2 ** 1024 in the backoff): about two hours into a real outage.
    with pytest.raises(Enough):
        await connect([f"amqp://guest:guest@127.0.0.1:{free_port()}/"], sleep=sleep)
    assert len(delays) == 1100 and max(delays) <= 10.0 and min(delays[10:]) >= 5.0
