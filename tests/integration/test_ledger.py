"""The ledger's operations, the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smsbridge.events import DispatchRequest, InboundMessage
from smsbridge.ledger import Claim, Ledger
from smsbridge.ledger.schema import LATEST
from tests.support.ledger import BACKENDS, ledger_location, open_ledger


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        yield opened


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def inbound(mdr_id: str = "mdr2-in-1", sender: str = "+12065550199") -> InboundMessage:
    return InboundMessage(tenant="acme", config_id="main", mdr_id=mdr_id, from_=sender, to="+12065550100",
                          body="hello")


def dispatch(client_id: str = "c-1", to: str = "+12065550199") -> DispatchRequest:
    return DispatchRequest(tenant="acme", config_id="main", client_message_id=client_id, from_extension="101",
                           from_="+12065550100", to=to, body="Your table is ready")


async def test_migrations_are_idempotent(ledger: Ledger) -> None:
    assert await ledger.version() == LATEST
    assert await ledger.upgrade() == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_processes_upgrading_at_once_do_not_clash(backend: str, tmp_path: Path) -> None:
    async with ledger_location(backend, tmp_path) as (url, schema):
        ledgers = [Ledger.open(url, schema_name=schema) for _ in range(4)]
        applied = await asyncio.gather(*(ledger.upgrade() for ledger in ledgers))  # none may fail
        assert sorted(applied) == [[], [], [], list(range(1, LATEST + 1))]  # exactly one recorded each version
        assert await ledgers[0].version() == LATEST
        for ledger in ledgers:
            await ledger.close()


async def test_inbound_once(ledger: Ledger) -> None:
    assert not await ledger.inbound_seen("mdr2-in-1")
    assert await ledger.record_inbound(inbound()) is True
    assert await ledger.record_inbound(inbound()) is False
    assert await ledger.inbound_seen("mdr2-in-1")
    row = await ledger.find("mdr2-in-1")
    assert row is not None and row.direction == "inbound" and row.state == "received"


async def test_delivery_claims_and_leases(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await ledger.claim_delivery("mdr2-x", "101", lease_s=30) is Claim.NEW
    assert await ledger.claim_delivery("mdr2-x", "101", lease_s=30) is Claim.BUSY
    assert await ledger.claim_delivery("mdr2-x", "102", lease_s=30) is Claim.NEW  # other extension
    clock.now += timedelta(seconds=31)  # the first worker died: its lease ran out
    assert await ledger.claim_delivery("mdr2-x", "101", lease_s=30) is Claim.NEW
    await ledger.delivered("mdr2-x", "101")
    assert await ledger.claim_delivery("mdr2-x", "101", lease_s=30) is Claim.DONE
    await ledger.release_delivery("mdr2-x", "102")
    assert await ledger.claim_delivery("mdr2-x", "102", lease_s=30) is Claim.NEW


async def test_outbound_once_and_the_dispatch_states(ledger: Ledger) -> None:
    assert await ledger.record_request(dispatch()) is True
    assert await ledger.record_request(dispatch()) is False
    row = await ledger.outbound("acme", "c-1")
    assert row is not None and (row.state, row.dispatch_state) == ("queued", "queued")
    started = await ledger.mark_sending(row.id)
    row = await ledger.outbound("acme", "c-1")
    assert row is not None and row.dispatch_state == "sending" and row.send_started_at == started
    await ledger.record_accepted(row.id, "mdr2-out-1", 1)
    row = await ledger.outbound("acme", "c-1")
    assert row is not None and (row.state, row.dispatch_state, row.mdr_id) == ("accepted", "done", "mdr2-out-1")
    assert await ledger.outbound("beta", "c-1") is None  # the key is (tenant, client id)


async def test_failure_is_recorded_with_its_reason(ledger: Ledger) -> None:
    await ledger.record_request(dispatch())
    row = await ledger.outbound("acme", "c-1")
    assert row is not None
    await ledger.record_failed(row.id, "opted_out", "recipient opted out (STOP)")
    row = await ledger.outbound("acme", "c-1")
    assert row is not None and (row.state, row.reason_code) == ("failed", "opted_out")


async def test_dlrs_deduplicated_and_states_only_move_forward(ledger: Ledger) -> None:
    await ledger.record_request(dispatch())
    row = await ledger.outbound("acme", "c-1")
    assert row is not None
    await ledger.record_accepted(row.id, "mdr2-out-1", 1)
    assert await ledger.claim_dlr("mdr2-out-1|2|message buffered|1003|t", "mdr2-out-1")
    assert not await ledger.claim_dlr("mdr2-out-1|2|message buffered|1003|t", "mdr2-out-1")
    await ledger.record_dlr("mdr2-out-1", "buffered", None, None, 2, 1003)
    await ledger.record_dlr("mdr2-out-1", "sent", None, None, 1, None)  # level 1 arriving late
    assert (await ledger.find("mdr2-out-1")).state == "buffered"  # type: ignore[union-attr]
    await ledger.record_dlr("mdr2-out-1", "delivered", None, None, 2, 1004)
    found = await ledger.find("c-1", tenant="acme")
    assert found is not None and found.state == "delivered"
    history = await ledger.history(found.id)
    assert [h.state for h in history] == ["queued", "accepted", "buffered", "sent", "delivered"]
    assert history[-1].dlr_code == 1004
    assert await ledger.record_dlr("mdr2-unknown", "sent", None, None, 1, None) is None


async def test_history_queries_by_number_and_state_paged(ledger: Ledger) -> None:
    for n in range(7):
        await ledger.record_request(dispatch(f"c-{n}", to="+12065550199" if n % 2 else "+14255550100"))
    rows = await ledger.search(number="+12065550199")
    assert [r.client_message_id for r in rows] == ["c-5", "c-3", "c-1"]
    first = await ledger.search(tenant="acme", limit=3)
    second = await ledger.search(tenant="acme", limit=3, before_id=first[-1].id)
    third = await ledger.search(tenant="acme", limit=3, before_id=second[-1].id)
    assert [r.client_message_id for r in first + second + third] == [f"c-{n}" for n in range(6, -1, -1)]
    row = await ledger.outbound("acme", "c-2")
    assert row is not None
    await ledger.record_failed(row.id, "too_long", "too long")
    assert [r.client_message_id for r in await ledger.search(state="failed")] == ["c-2"]
    assert await ledger.search(state="failed", tenant="beta") == []
    assert await ledger.search(since=datetime.now(UTC) + timedelta(days=1)) == []


async def test_find_by_ledger_id_mdr_id_or_client_id(ledger: Ledger) -> None:
    await ledger.record_inbound(inbound("mdr2-in-9"))
    row = await ledger.find("mdr2-in-9")
    assert row is not None
    assert await ledger.find(str(row.id)) == row
    await ledger.record_request(dispatch("pbx-42"))
    assert (await ledger.find("pbx-42")) is not None
    assert await ledger.find("nope") is None


async def test_prune_forgets_old_rows_only(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    await ledger.record_inbound(inbound("mdr2-old"))
    await ledger.claim_dlr("old-key", "mdr2-old")
    clock.now += timedelta(days=40)
    await ledger.record_inbound(inbound("mdr2-new"))
    assert await ledger.prune(timedelta(days=30)) == 1
    assert await ledger.find("mdr2-old") is None and await ledger.find("mdr2-new") is not None
    assert await ledger.claim_dlr("old-key", "mdr2-old")  # forgotten too


async def test_dispatcher_claims_or_records_its_request(ledger: Ledger) -> None:
    row = await ledger.claim_send(dispatch("c-9"))  # absent (pruned, say): recorded, then claimed
    assert (row.client_message_id, row.state, row.dispatch_state) == ("c-9", "queued", "queued")
    after = await ledger.outbound("acme", "c-9")
    assert after is not None and after.dispatch_state == "sending" and after.send_started_at is not None
    again = await ledger.claim_send(dispatch("c-9"))  # claimed before: "maybe sent", left as it is
    assert again.id == row.id and again.dispatch_state == "sending"
    assert again.send_started_at == after.send_started_at
    await ledger.record_accepted(row.id, "mdr2-c-9", 1)
    done = await ledger.claim_send(dispatch("c-9"))
    assert done.dispatch_state == "done" and done.mdr_id == "mdr2-c-9"
    assert [h.state for h in await ledger.history(row.id)] == ["queued", "accepted"]


async def test_claiming_a_recorded_request_marks_it_sending(ledger: Ledger) -> None:
    assert await ledger.record_request(dispatch("c-8")) is True
    row = await ledger.claim_send(dispatch("c-8"))
    assert row.dispatch_state == "queued"  # as it was: this claim is the first
    after = await ledger.outbound("acme", "c-8")
    assert after is not None and after.dispatch_state == "sending"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_racing_processes_get_one_claim_each(backend: str, tmp_path: Path) -> None:
    """Four ledgers (four connections, as four processes would have) claim the same deliveries at
    once: each delivery goes to exactly one of them, first as a new claim, then as a lease taken
    over after it ran out (the read-then-write path)."""
    async with ledger_location(backend, tmp_path) as (url, schema):
        ledgers = [Ledger.open(url, schema_name=schema) for _ in range(4)]
        await ledgers[0].upgrade()
        clock = Clock()
        for ledger in ledgers:
            ledger._now = clock  # type: ignore[method-assign]
        keys = [f"mdr2-race-{n}" for n in range(15)]

        async def race() -> list[int]:
            claims = await asyncio.gather(*(ledger.claim_delivery(key, "101", lease_s=30)
                                            for key in keys for ledger in ledgers))
            return [sum(c is Claim.NEW for c in claims[i * 4:(i + 1) * 4]) for i in range(len(keys))]

        try:
            assert await race() == [1] * len(keys)
            clock.now += timedelta(seconds=31)  # every holder died
            assert await race() == [1] * len(keys)
        finally:
            for ledger in ledgers:
                await ledger.close()
