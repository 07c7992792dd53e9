"""Messages held in place while something every message needs is away (the inbound stage: the
ledger), in one process.

One held message at a time (the probe) tries again every `probe_s`; every other held message
waits until a message went through, and only then tries again (or after `cap_s`, in case the
probe itself stopped being held). So a process notices that the ledger is back within about
`probe_s`, with one attempt in flight every `probe_s` instead of one per held message.

Why it matters for order: with several inbound processes, texts of one conversation are held
by different processes. The process that notices first records its texts and their deliveries
start; a text another process still holds gets recorded later and, if a later text of its
conversation was delivered meanwhile, arrives after it. Noticing within `probe_s` keeps that
window short; it does not close it (README, "Order per conversation").

`stop()` (a process shutting down) wakes every held message for good: the consumer then gives
each one back to the broker unsettled instead of trying again.
"""

from __future__ import annotations

import asyncio
import contextlib

HOLD_PROBE_S = 0.2
HOLD_WAIT_CAP_S = 5.0


class Hold:
    def __init__(self, probe_s: float = HOLD_PROBE_S, cap_s: float = HOLD_WAIT_CAP_S) -> None:
        self._probe_s = probe_s
        self._cap_s = cap_s
        self._through = asyncio.Event()  # set when a message went through since the last hold began
        self._probing = False
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def held(self) -> None:
        """A message failed with the condition: it is (still) there."""
        if not self._stopped:
            self._through.clear()

    def went_through(self) -> None:
        """A message was handled: wake every held one."""
        self._through.set()

    def stop(self) -> None:
        """No more holding: wake every held message now and from now on."""
        self._stopped = True
        self._through.set()

    async def pause(self) -> None:
        """The probe waits `probe_s`; any other held message waits until one went through."""
        if self._probing:
            await self._until_through(self._cap_s)
            return
        self._probing = True
        try:
            await self._until_through(self._probe_s)
        finally:
            self._probing = False

    async def _until_through(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._through.wait(), timeout)
