from __future__ import annotations

import asyncio

from smsbridge.broker.ordering import KeyedLocks


async def test_same_key_runs_in_arrival_order_and_other_keys_run_alongside() -> None:
    locks = KeyedLocks()
    log: list[str] = []

    async def work(key: str, name: str, delay: float) -> None:
        async with locks.hold(key):
            log.append(f"start {name}")
            await asyncio.sleep(delay)
            log.append(f"end {name}")

    await asyncio.gather(work("a", "a1", 0.05), work("a", "a2", 0.0), work("b", "b1", 0.01))
    assert log.index("end a1") < log.index("start a2")  # a2 waited for a1 although it is quicker
    assert log.index("start b1") < log.index("end a1")  # b did not wait for a
    assert len(locks) == 0  # nothing kept once idle


async def test_no_key_means_no_serialisation() -> None:
    locks = KeyedLocks()
    async with locks.hold(None), locks.hold(None):
        assert len(locks) == 0
