"""bench/harness.together: a benchmark that fails part-way starts nothing more after its cleanup."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.bench_modules import load

harness = load("harness")


async def test_the_first_failure_cancels_the_others_before_it_is_raised() -> None:
    started_late: list[str] = []
    cancelled = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("dispatcher did not start")

    async def slow_start() -> None:
        try:
            await asyncio.Event().wait()  # a start that would finish after the benchmark's cleanup
        except asyncio.CancelledError:
            cancelled.set()
            raise
        started_late.append("process")

    with pytest.raises(RuntimeError, match="did not start"):
        await harness.together(slow_start(), fails())
    assert cancelled.is_set()  # already, not at some later point
    assert started_late == []


async def test_results_come_back_in_order_when_all_succeed() -> None:
    async def value(n: int) -> int:
        await asyncio.sleep(0)
        return n

    assert await harness.together(value(1), value(2), value(3)) == [1, 2, 3]
