"""A delivery receipt whose handling the ledger failed part-way is handled in full when it comes
again (from the delay queue, or held in place): it is never taken for a Flowroute resend and
dropped, also when its claim committed but the caller saw an outage (the COMMIT's answer lost).
On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import LedgerUnavailable
from smsbridge.events import DeliveryReceipt, DispatchRequest, StatusEvent, new_event_id
from smsbridge.ledger import Ledger
from smsbridge.ledger.runner import TransactionTimeout
from smsbridge.metrics import Metrics
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.inbound import InboundHandler
from tests.support.ledger import BACKENDS, ledger_location, open_ledger
from tests.support.settings import settings
from tests.support.wait import eventually

CONTEXT = MessageContext(origin_key="receiver", attempt=1)
MDR = "mdr2-out-dlr"


class FailsOnce:
    """The real ledger, but `method` raises LedgerUnavailable the first time (the database went
    away at that step), as the runner raises it. With `after_commit`, only once its transaction
    committed: the COMMIT went through and its answer was lost (a reset connection, or the
    runner's deadline firing just after the server committed), as the caller sees it; `committed`
    is then what that call returned."""

    def __init__(self, ledger: Ledger, method: str, *, after_commit: bool = False) -> None:
        self._ledger, self._method, self._after_commit = ledger, method, after_commit
        self.failed, self.committed = False, None

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._ledger, name)
        if name != self._method:
            return real

        async def once(*args: Any, **kwargs: Any) -> Any:
            if self.failed:
                return await real(*args, **kwargs)
            self.failed = True
            if self._after_commit:
                self.committed = await real(*args, **kwargs)
            raise LedgerUnavailable(f"ledger unavailable: {'TransactionTimeout' if self._after_commit else 'OSError'}")
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
    # and now Flowroute posting it again (a new webhook, so a new event) is a resend
    await handler.handle(msgspec.structs.replace(receipt, event_id=new_event_id()), CONTEXT)
    assert len(statuses(publisher)) == 1


def receipt_for(mdr_id: str = MDR, **fields: Any) -> DeliveryReceipt:
    """A fresh event each call (a new event_id), like each webhook Flowroute posts."""
    base: dict[str, Any] = {"tenant": "acme", "config_id": "main", "level": 2, "status": "delivered",
                            "status_code": None, "flowroute_timestamp": datetime(2026, 11, 30, 12, tzinfo=UTC)}
    return DeliveryReceipt(mdr_id=mdr_id, **(base | fields))


async def history_states(ledger: Ledger) -> list[str]:
    found = await ledger.find(MDR)
    assert found is not None
    return [line.state for line in await ledger.history(found.id)]


async def test_a_receipt_whose_claim_committed_unseen_is_forwarded_when_the_same_event_comes_again(
        ledger: Ledger) -> None:
    in_doubt = FailsOnce(ledger, "claim_and_record_dlr", after_commit=True)
    publisher = InMemoryPublisher()
    handler = InboundHandler(settings(prefix="unit"), publisher, in_doubt, Metrics())  # type: ignore[arg-type]
    receipt = receipt_for()
    with pytest.raises(LedgerUnavailable):
        await handler.handle(receipt, CONTEXT)
    assert in_doubt.committed is True and statuses(publisher) == []  # claimed and recorded, not forwarded
    found = await ledger.find(MDR)
    assert found is not None and found.state == "delivered"
    recorded = await history_states(ledger)

    redelivered = msgspec.json.decode(msgspec.json.encode(receipt), type=DeliveryReceipt)  # as off the broker
    await handler.handle(redelivered, CONTEXT)
    (status,) = statuses(publisher)
    assert (status.state, status.client_message_id) == ("delivered", "c-dlr")
    assert status.event_id == receipt.event_id  # the PBX's key to drop a repeat of this status
    assert await history_states(ledger) == recorded  # its effect was committed once, not recorded again

    await handler.handle(redelivered, CONTEXT)  # once more (a crash before the ack): the same status again
    assert [s.event_id for s in statuses(publisher)] == [receipt.event_id] * 2
    await handler.handle(receipt_for(), CONTEXT)  # Flowroute posting it again: a new event, a resend
    assert len(statuses(publisher)) == 2
    assert await history_states(ledger) == recorded


async def test_a_flowroute_resend_while_the_first_claim_is_in_doubt_is_still_ignored(ledger: Ledger) -> None:
    in_doubt = FailsOnce(ledger, "claim_and_record_dlr", after_commit=True)
    publisher = InMemoryPublisher()
    handler = InboundHandler(settings(prefix="unit"), publisher, in_doubt, Metrics())  # type: ignore[arg-type]
    first = receipt_for()
    with pytest.raises(LedgerUnavailable):
        await handler.handle(first, CONTEXT)
    await handler.handle(receipt_for(), CONTEXT)  # Flowroute's resend, handled before the retry
    assert statuses(publisher) == []
    await handler.handle(first, CONTEXT)  # the first event's retry forwards it: once in all
    assert [s.event_id for s in statuses(publisher)] == [first.event_id]


async def test_another_tenants_receipt_with_the_same_id_is_its_own_claim(ledger: Ledger) -> None:
    in_doubt = FailsOnce(ledger, "claim_and_record_dlr", after_commit=True)
    publisher = InMemoryPublisher()
    handler = InboundHandler(settings(prefix="unit"), publisher, in_doubt, Metrics())  # type: ignore[arg-type]
    ours = receipt_for()
    with pytest.raises(LedgerUnavailable):
        await handler.handle(ours, CONTEXT)
    # the same Flowroute id, level, status and time, posted to another tenant's webhook (with a
    # client id in its URL): a receipt of its own, neither a resend of ours nor our claim
    theirs = receipt_for(tenant="beta", config_id="beta-main", client_message_id="b-1")
    await handler.handle(theirs, CONTEXT)
    await handler.handle(theirs, CONTEXT)  # its own redelivery: forwarded again, same id
    await handler.handle(receipt_for(tenant="beta", config_id="beta-main",
                                     client_message_id="b-1"), CONTEXT)  # its resend: ignored
    assert [(s.tenant, s.client_message_id) for s in statuses(publisher)] == [("beta", "b-1")] * 2
    await handler.handle(ours, CONTEXT)
    assert [(s.tenant, s.client_message_id, s.state) for s in statuses(publisher)][2:] == [
        ("acme", "c-dlr", "delivered")]
    found = await ledger.find(MDR)
    assert found is not None and found.state == "delivered"  # the other tenant's receipt did not touch ours


# A deferred constraint trigger runs at COMMIT: while `slow_commits` holds a row, the next
# transaction that claims a receipt sleeps there, then commits.
SLOW_COMMIT = [
    "CREATE TABLE slow_commits (seconds float NOT NULL)",
    """CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
       DECLARE pause float;
       BEGIN
         DELETE FROM slow_commits RETURNING seconds INTO pause;
         IF pause IS NOT NULL THEN PERFORM pg_sleep(pause); END IF;
         RETURN NULL;
       END $$""",
    """CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON dlrs_seen
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()""",
]


def slow_next_commit(c: sa.Connection, seconds: float) -> None:
    """The next receipt claim spends `seconds` in its COMMIT, then commits: the server's answer
    comes after the caller's deadline, which ends the connection first."""
    for statement in SLOW_COMMIT:
        c.execute(sa.text(statement))
    c.execute(sa.text("INSERT INTO slow_commits VALUES (:seconds)"), {"seconds": seconds})


DEADLINE_S = 1.0


async def test_a_commit_that_outlived_the_deadline_does_not_make_the_receipts_retry_a_resend(
        tmp_path: Path) -> None:
    """The same as above through the real runner on PostgreSQL: the claim's COMMIT runs past
    `[ledger] timeout_s`, the runner ends the connection (`TransactionTimeout`, an outage), and the
    server commits all the same."""
    async with ledger_location("postgresql", tmp_path) as (url, schema):
        ledger = Ledger.open(url, schema_name=schema)  # set-up and checks, the default deadline
        hurried = Ledger.open(url, schema_name=schema, timeout_s=DEADLINE_S)  # the inbound stage's
        try:
            await ledger.upgrade()
            await ledger.record_request(DispatchRequest(
                tenant="acme", config_id="main", client_message_id="c-dlr", from_extension="101",
                from_="+12065550100", to="+12065550199", body="Your table is ready"))
            row = await ledger.outbound("acme", "c-dlr")
            assert row is not None and await ledger.record_accepted(row.id, MDR, 1)
            publisher = InMemoryPublisher()
            handler = InboundHandler(settings(prefix="unit"), publisher, hurried, Metrics())
            receipt = receipt_for()
            await ledger._db.write(slow_next_commit, 3 * DEADLINE_S)
            with pytest.raises(LedgerUnavailable) as outage:
                await handler.handle(receipt, CONTEXT)
            assert isinstance(outage.value.__cause__, TransactionTimeout) and statuses(publisher) == []

            async def committed() -> bool:
                found = await ledger.find(MDR)
                return found is not None and found.state == "delivered"
            await eventually(committed, what="the abandoned COMMIT to have gone through at the server")

            await handler.handle(receipt, CONTEXT)  # the event again (held in place, or redelivered)
            assert [(s.state, s.event_id) for s in statuses(publisher)] == [("delivered", receipt.event_id)]
            await handler.handle(receipt_for(), CONTEXT)  # Flowroute's resend
            assert len(statuses(publisher)) == 1
        finally:
            await hurried.close()
            await ledger.close()
