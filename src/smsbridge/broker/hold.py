"""Messages held in place while something every message needs is away (the inbound stage: the
ledger), in one process.

Each held message tries again after its own growing pause, up to `cap_s`; one of them at a
time (the probe) tries every `probe_s` instead, and the moment any message goes through, every
held one tries again at once. So a process notices that the ledger is back within about
`probe_s`, not within the longest pause, with one probe in flight instead of one per message.

Why it matters for order: with several inbound processes, texts of one conversation are held
by different processes. The process that notices first records its texts and their deliveries
start; a text another process still holds gets recorded later and, if a later text of its
conversation was delivered meanwhile, arrives after it. Noticing within `probe_s` keeps that
window shorter than a text's way through the bridge (tests/integration/test_ledger_outage.py).
"""

from __future__ import annotations

import asyncio
import contextlib

HOLD_PROBE_S = 0.2
HOLD_PAUSE_CAP_S = 5.0


class Hold:
    def __init__(self, probe_s: float = HOLD_PROBE_S) -> None:
        self._probe_s = probe_s
        self._through = asyncio.Event()  # set when a message went through since the last hold began
        self._probing = False

    def held(self) -> None:
        """A message failed with the condition: it is (still) there."""
        self._through.clear()

    def went_through(self) -> None:
        """A message was handled: wake every held one."""
        self._through.set()

    async def pause(self, pause_s: float) -> None:
        """Wait until a message went through, or `pause_s` (the probe: `probe_s`) passed."""
        if self._probing:
            await self._until_through(pause_s)
            return
        self._probing = True
        try:
            await self._until_through(min(pause_s, self._probe_s))
        finally:
            self._probing = False

    async def _until_through(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._through.wait(), timeout)
