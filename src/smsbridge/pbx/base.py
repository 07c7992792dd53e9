"""The one small interface every PBX delivery adapter implements."""

from __future__ import annotations

from typing import Protocol

from smsbridge.events import InboundDelivery


class DeliveryAdapter(Protocol):
    kind: str

    async def deliver(self, delivery: InboundDelivery) -> None:
        """Return once the PBX has the text; raise `RetryableError` or `PermanentError` otherwise."""

    async def close(self) -> None: ...
