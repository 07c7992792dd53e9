"""A delivery receipt whose handling the ledger failed part-way is handled in full when it comes
again (from the delay queue, or held in place): it is never taken for a Flowroute resend and
dropped. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import LedgerUnavailable
from smsbridge.events import DeliveryReceipt, DispatchRequest, StatusEvent
from smsbridge.ledger import Ledger
from smsbridge.metrics import Metrics
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.inbound import InboundHandler
from tests.support.ledger import BACKENDS, open_ledger
from tests.support.settings import settings

CONTEXT = MessageContext(origin_key="receiver", attempt=1)
MDR = "mdr2-out-dlr"


class FailsOnce:
    """The real ledger, but `method` raises LedgerUnavailable the first time (the database went
    away at that step), as the runner raises it."""

    def __init__(self, ledger: Ledger, method: str) -> None:
        self._ledger, self._method, self.failed = ledger, method, False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._ledger, name)
        if name != self._method:
            return real

        async def once(*args: Any, **kwargs: Any) -> Any:
            if not self.failed:
                self.failed = True
                raise LedgerUnavailable("ledger unavailable: OSError")
            return await real(*args, **kwargs)
        return once


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        await opened.record_request(DispatchRequest(
            tenant="acme", config_id="main", client_message_id="c-dlr", from_extension="101",
            from_="+12065550100", to="+12065550199", body="Your table is ready"))
        row = await opened.outbound("acme", "c-dlr")
        assert row is not None and await opened.record_accepted(row.id, MDR, 1)
        yield opened


def statuses(publisher: InMemoryPublisher) -> list[StatusEvent]:
    return [msgspec.json.decode(p.body, type=StatusEvent) for p in publisher.published
            if p.exchange == names.status_exchange("unit")]


@pytest.mark.parametrize("failing", ["receipt_target", "claim_and_record_dlr"])
async def test_a_receipt_the_ledger_failed_on_is_handled_in_full_when_it_comes_again(ledger: Ledger,
                                                                                     failing: str) -> None:
    flaky = FailsOnce(ledger, failing)
    publisher = InMemoryPublisher()
    handler = InboundHandler(settings(prefix="unit"), publisher, flaky, Metrics())  # type: ignore[arg-type]
    receipt = DeliveryReceipt(tenant="acme", config_id="main", mdr_id=MDR, level=2, status="delivered",
                              status_code=None, flowroute_timestamp=datetime(2026, 11, 30, 12, tzinfo=UTC))
    with pytest.raises(LedgerUnavailable):
        await handler.handle(receipt, CONTEXT)
    assert flaky.failed and statuses(publisher) == []
    await handler.handle(receipt, CONTEXT)  # its next delivery
    (status,) = statuses(publisher)
    assert (status.state, status.client_message_id) == ("delivered", "c-dlr")
    found = await ledger.find(MDR)
    assert found is not None and found.state == "delivered"
    await handler.handle(receipt, CONTEXT)  # and now Flowroute posting it again is a resend
    assert len(statuses(publisher)) == 1
