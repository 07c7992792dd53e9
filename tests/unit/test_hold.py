"""Messages held in place while the ledger is away (`broker/hold.py`): one probes often, the others
wait for a message to go through, and all go again the moment one does."""

from __future__ import annotations

import asyncio

from smsbridge.broker.hold import Hold


async def _started(tasks: list[asyncio.Task[None]]) -> None:
    """Give the tasks a moment to block; none may finish in it."""
    done, _ = await asyncio.wait(tasks, timeout=0.05)
    assert not done


async def test_every_held_message_goes_again_the_moment_one_went_through() -> None:
    hold = Hold(probe_s=60.0, cap_s=60.0)
    hold.held()
    waiting = [asyncio.create_task(hold.pause()) for _ in range(3)]
    await _started(waiting)
    hold.went_through()
    await asyncio.wait_for(asyncio.gather(*waiting), 5.0)


async def test_one_held_message_probes_every_probe_s_the_others_wait_for_one_to_go_through() -> None:
    hold = Hold(probe_s=0.01, cap_s=60.0)
    hold.held()
    probe = asyncio.create_task(hold.pause())
    others = [asyncio.create_task(hold.pause()) for _ in range(2)]
    await asyncio.wait_for(probe, 5.0)  # back after probe_s, not 60 s
    await _started(others)
    hold.went_through()
    await asyncio.wait_for(asyncio.gather(*others), 5.0)


async def test_the_others_try_again_after_cap_s_should_the_probe_stop_being_held() -> None:
    hold = Hold(probe_s=60.0, cap_s=0.01)
    hold.held()
    probe = asyncio.create_task(hold.pause())
    await _started([probe])
    await asyncio.wait_for(hold.pause(), 5.0)  # not the probe: back after cap_s
    probe.cancel()


async def test_stop_wakes_every_held_message_for_good() -> None:
    hold = Hold(probe_s=60.0, cap_s=60.0)
    hold.held()
    waiting = [asyncio.create_task(hold.pause()) for _ in range(2)]
    await _started(waiting)
    hold.stop()
    await asyncio.wait_for(asyncio.gather(*waiting), 5.0)
    assert hold.stopped
    hold.held()  # a failure after the stop no longer makes anyone wait
    await asyncio.wait_for(hold.pause(), 5.0)
