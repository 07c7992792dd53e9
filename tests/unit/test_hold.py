"""Messages held in place while the ledger is away (`broker/hold.py`): one probes often, and
all go again the moment one goes through."""

from __future__ import annotations

import asyncio

from smsbridge.broker.hold import Hold


async def test_every_held_message_goes_again_the_moment_one_went_through() -> None:
    hold = Hold(probe_s=60.0)
    hold.held()
    waiting = [asyncio.create_task(hold.pause(60.0)) for _ in range(3)]
    await asyncio.sleep(0)  # let them start waiting (a yield, not a delay)
    assert not any(task.done() for task in waiting)
    hold.went_through()
    await asyncio.wait_for(asyncio.gather(*waiting), 5.0)


async def test_one_held_message_probes_every_probe_s_the_others_wait_their_own_pause() -> None:
    hold = Hold(probe_s=0.01)
    hold.held()
    probe = asyncio.create_task(hold.pause(60.0))
    others = [asyncio.create_task(hold.pause(60.0)) for _ in range(2)]
    await asyncio.wait_for(probe, 5.0)  # back after probe_s, not 60 s
    assert not any(task.done() for task in others)
    hold.went_through()
    await asyncio.wait_for(asyncio.gather(*others), 5.0)
