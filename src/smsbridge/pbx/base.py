"""The one small interface every PBX delivery adapter implements."""

from __future__ import annotations

from typing import Protocol

from smsbridge.events import InboundDelivery


class DeliveryAdapter(Protocol):
    kind: str

    async def deliver(self, delivery: InboundDelivery) -> str | None:
        """Return once the PBX has the text; raise `RetryableError` or `PermanentError` otherwise.

        The result is the delivery state when it is not plain "delivered": "accepted" when a relay
        took the text without proof that it reached a phone (SIP 202)."""

    async def close(self) -> None: ...
