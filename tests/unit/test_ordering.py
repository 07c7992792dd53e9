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


async def test_a_waiter_cancelled_in_line_lets_the_next_go_in_order_and_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    log: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def work(name: str) -> None:
        async with locks.hold("a"):
            log.append(name)
            first_in.set()
            await release.wait()

    first = asyncio.create_task(work("first"))
    await first_in.wait()
    cancelled = asyncio.create_task(work("cancelled"))
    last = asyncio.create_task(work("last"))
    await asyncio.sleep(0)  # both wait in line
    cancelled.cancel()
    release.set()
    await asyncio.gather(first, last)
    assert cancelled.cancelled() and log == ["first", "last"]
    assert len(locks) == 0


async def test_an_error_in_the_block_releases_the_key() -> None:
    locks = KeyedLocks()
    try:
        async with locks.hold("a"):
            raise ValueError("refused")
    except ValueError:
        pass
    async with locks.hold("a"):  # not held for ever
        assert len(locks) == 1
    assert len(locks) == 0
