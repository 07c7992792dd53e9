"""A delivery claim's lease while its attempt runs: the arithmetic (pure), and `within_lease`
with renewals that succeed, fail, hang, or find the claim gone (the renewal is its seam)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from smsbridge import lease
from smsbridge.workers.held import LeaseEnded, within_lease


def test_renewals_come_three_times_a_lease_and_the_stop_a_quarter_before_its_end() -> None:
    assert lease.renew_every_s(30.0) == 10.0
    assert lease.stop_margin_s(30.0) == 7.5
    assert lease.stop_at(100.0, 30.0) == 122.5
    assert lease.next_renewal_at(100.0, 30.0) == 110.0


@pytest.mark.parametrize("lease_s", [0.5, 10.0, 50.0, 3600.0])
def test_a_failed_renewal_is_tried_again_before_the_stop_and_the_stop_comes_before_the_end(lease_s: float) -> None:
    second_try = lease.next_renewal_at(lease.next_renewal_at(0.0, lease_s), lease_s)
    assert second_try < lease.stop_at(0.0, lease_s) < lease_s
    assert lease.stop_margin_s(lease_s) > 0


async def never() -> str:
    await asyncio.Event().wait()
    return "unreachable"


async def after_s(seconds: float, result: str) -> str:
    await asyncio.sleep(seconds)  # the attempt's own duration: what a slow PBX takes
    return result


LEASE_S = 2.0


async def test_an_attempt_longer_than_its_lease_finishes_while_renewals_succeed() -> None:
    renewals: list[float] = []
    loop = asyncio.get_running_loop()

    async def renew() -> bool:
        renewals.append(loop.time())
        return True

    started = loop.time()
    assert await within_lease(after_s(2 * LEASE_S, "delivered"), renew, LEASE_S, started) == "delivered"
    assert len(renewals) >= 4
    gaps = [b - a for a, b in itertools.pairwise([started, *renewals])]
    assert all(gap < LEASE_S - lease.stop_margin_s(LEASE_S) for gap in gaps)  # none let the stop come


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_renewals_that_fail_stop_the_attempt_before_its_lease_ends(failure: str) -> None:
    loop = asyncio.get_running_loop()
    cancelled = asyncio.Event()

    async def attempt() -> str:
        try:
            return await never()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def renew() -> bool:
        if failure == "hangs":
            await asyncio.Event().wait()
        raise ConnectionError("ledger away")

    started = loop.time()
    with pytest.raises(LeaseEnded, match="no renewal"):
        await within_lease(attempt(), renew, LEASE_S, started)
    assert cancelled.is_set()
    assert lease.stop_at(started, LEASE_S) <= loop.time() < started + LEASE_S


async def test_a_claim_found_gone_stops_the_attempt_at_the_first_renewal() -> None:
    loop = asyncio.get_running_loop()

    async def renew() -> bool:
        return False

    started = loop.time()
    with pytest.raises(LeaseEnded, match="another worker holds it"):
        await within_lease(never(), renew, LEASE_S, started)
    assert loop.time() - started < lease.stop_at(0.0, LEASE_S)


async def test_an_attempt_that_fails_fails_with_its_own_error_and_renews_no_more() -> None:
    renewals: list[float] = []

    async def renew() -> bool:
        renewals.append(0.0)
        return True

    async def refused() -> str:
        raise ValueError("the PBX said no")

    with pytest.raises(ValueError, match="said no"):
        await within_lease(refused(), renew, LEASE_S, asyncio.get_running_loop().time())
    assert renewals == []


async def test_a_claim_taken_later_than_its_lease_allows_never_starts_the_attempt() -> None:
    started = asyncio.Event()

    async def attempt() -> str:
        started.set()
        return "delivered"

    async def renew() -> bool:
        return True

    long_ago = asyncio.get_running_loop().time() - LEASE_S  # the claim's write took the whole lease
    with pytest.raises(LeaseEnded):
        await within_lease(attempt(), renew, LEASE_S, long_ago)
    assert not started.is_set()


async def test_a_quick_attempt_runs_in_the_callers_task_and_starts_no_other() -> None:
    """No task of its own and no heartbeat task before a renewal is due: each would cost a turn of
    the event loop on every delivery's way to the PBX."""
    seen: list[tuple[asyncio.Task[object] | None, int]] = []

    async def attempt() -> str:
        seen.append((asyncio.current_task(), len(asyncio.all_tasks())))
        return "delivered"

    async def renew() -> bool:
        return True

    tasks_before = len(asyncio.all_tasks())
    assert await within_lease(attempt(), renew, LEASE_S, asyncio.get_running_loop().time()) == "delivered"
    assert seen == [(asyncio.current_task(), tasks_before)]
