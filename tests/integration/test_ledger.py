"""The ledger's operations, the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from smsbridge.events import DispatchRequest, InboundMessage
from smsbridge.ledger import Claim, DeliveryKey, Ledger, MessageRow, Scope
from smsbridge.ledger.schema import LATEST, MIGRATIONS
from tests.support.ledger import BACKENDS, ledger_location, open_ledger


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        yield opened


MAIN = Scope("acme", "main")
BETA = Scope("beta", "beta-main")


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


async def recorded(ledger: Ledger, request: DispatchRequest) -> MessageRow:
    """The request's row as the outbound worker leaves it: recorded, "queued"."""
    await ledger.record_request(request)
    row = await ledger.outbound(request.tenant, request.client_message_id)
    assert row is not None
    return row


async def test_migrations_are_idempotent(ledger: Ledger) -> None:
    assert await ledger.version() == LATEST
    assert await ledger.upgrade() == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_processes_upgrading_at_once_do_not_clash(backend: str, tmp_path: Path) -> None:
    async with ledger_location(backend, tmp_path) as (url, schema):
        ledgers = [Ledger.open(url, schema_name=schema) for _ in range(4)]
        applied = await asyncio.gather(*(ledger.upgrade() for ledger in ledgers))  # none may fail
        # exactly one of them recorded each version
        assert sorted(applied) == [[], [], [], [v for v, _, _ in MIGRATIONS]]
        assert await ledgers[0].version() == LATEST
        for ledger in ledgers:
            await ledger.close()


def as_at_version_4(c: sa.Connection) -> None:
    """The ledger as release 4 left it: no `dlrs_seen.claimed_by`, one receipt claimed then."""
    c.execute(sa.text("ALTER TABLE dlrs_seen DROP COLUMN claimed_by"))
    c.execute(sa.text("DELETE FROM smsbridge_schema WHERE version >= 5"))
    c.execute(sa.text("INSERT INTO dlrs_seen (dedupe_key, mdr_id, seen_at) VALUES ('main|old|2', 'old', :at)"),
              {"at": datetime.now(UTC)})


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_receipt_claim_names_its_event_and_claims_from_before_that_stay_resends(backend: str,
                                                                                        tmp_path: Path) -> None:
    async with ledger_location(backend, tmp_path) as (url, schema):
        ledger = Ledger.open(url, schema_name=schema)
        try:
            await ledger.upgrade()
            await ledger._db.write(as_at_version_4)
            assert await ledger.version() == 4
            assert await ledger.upgrade() == [5, 6]  # 6 finds its tables in shape already
            assert not await ledger.claim_dlr("main|old|2", "old", "event-a")  # claimed by nobody known: a resend
            assert await ledger.claim_dlr("main|new|2", "new", "event-a")
            assert await ledger.claim_dlr("main|new|2", "new", "event-a")  # the same event again: its own claim
            assert not await ledger.claim_dlr("main|new|2", "new", "event-b")  # a Flowroute resend
            assert not await ledger.claim_dlr("main|new|2", "new")  # nothing to name: the old rule
        finally:
            await ledger.close()


async def test_inbound_once(ledger: Ledger) -> None:
    assert not await ledger.inbound_seen(MAIN, "mdr2-in-1")
    assert await ledger.record_inbound(inbound()) is True
    assert await ledger.record_inbound(inbound()) is False
    assert await ledger.inbound_seen(MAIN, "mdr2-in-1")
    row = await ledger.find("mdr2-in-1")
    assert row is not None and row.direction == "inbound" and row.state == "received"


async def test_delivery_claims_and_leases(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await ledger.claim_delivery(DeliveryKey("main", "mdr2-x", "101"), lease_s=30) is Claim.NEW
    assert await ledger.claim_delivery(DeliveryKey("main", "mdr2-x", "101"), lease_s=30) is Claim.BUSY
    assert await ledger.claim_delivery(DeliveryKey("main", "mdr2-x", "102"), lease_s=30) is Claim.NEW  # other extension
    clock.now += timedelta(seconds=31)  # the first worker died: its lease ran out
    assert await ledger.claim_delivery(DeliveryKey("main", "mdr2-x", "101"), lease_s=30) is Claim.NEW
    await ledger.delivered(DeliveryKey("main", "mdr2-x", "101"))
    assert await ledger.claim_delivery(DeliveryKey("main", "mdr2-x", "101"), lease_s=30) is Claim.DONE
    await ledger.release_delivery(DeliveryKey("main", "mdr2-x", "102"))
    assert await ledger.claim_delivery(DeliveryKey("main", "mdr2-x", "102"), lease_s=30) is Claim.NEW


async def test_outbound_once_and_the_dispatch_states(ledger: Ledger) -> None:
    assert await ledger.record_request(dispatch()) is True
    assert await ledger.record_request(dispatch()) is False
    row = await ledger.outbound("acme", "c-1")
    assert row is not None and (row.state, row.dispatch_state) == ("queued", "queued")
    claimed, mine = await ledger.claim_send(dispatch(), gap=timedelta(0))  # the dispatcher, before the POST
    row = await ledger.outbound("acme", "c-1")
    assert mine and row is not None and row.dispatch_state == "sending"
    assert row.send_started_at == claimed.send_started_at is not None
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
    await ledger.record_dlr(MAIN, "mdr2-out-1", "buffered", None, None, 2, 1003)
    await ledger.record_dlr(MAIN, "mdr2-out-1", "sent", None, None, 1, None)  # level 1 arriving late
    assert (await ledger.find("mdr2-out-1")).state == "buffered"  # type: ignore[union-attr]
    await ledger.record_dlr(MAIN, "mdr2-out-1", "delivered", None, None, 2, 1004)
    found = await ledger.find("c-1", tenant="acme")
    assert found is not None and found.state == "delivered"
    history = await ledger.history(found.id)
    assert [h.state for h in history] == ["queued", "accepted", "buffered", "sent", "delivered"]
    assert history[-1].dlr_code == 1004
    assert await ledger.record_dlr(MAIN, "mdr2-unknown", "sent", None, None, 1, None) is None


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


async def test_an_mdr_held_by_another_request_is_never_recorded_for_this_one(ledger: Ledger) -> None:
    first, second = [await recorded(ledger, dispatch(c)) for c in ("c-a", "c-b")]
    assert await ledger.record_accepted(first.id, "mdr2-same", 1) is True
    assert await ledger.record_accepted(second.id, "mdr2-same", 1) is False  # was: IntegrityError
    assert await ledger.held_mdrs(["mdr2-same", "mdr2-other"]) == {"mdr2-same"}
    row = await ledger.outbound("acme", "c-b")
    assert row is not None and row.dispatch_state == "queued" and row.mdr_id is None


async def test_requests_alike_in_doubt(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    rows = [await recorded(ledger, dispatch(c)) for c in ("c-1", "c-2", "c-3")]
    for request in (dispatch("c-2"), dispatch("c-3"), msgspec.structs.replace(dispatch("c-4"), body="something else")):
        assert (await ledger.claim_send(request, gap=timedelta(0)))[1]  # marked "sending"
    alike = await ledger.alike_in_doubt(rows[0], timedelta(hours=1))
    assert len(alike) == 2 and all(moment.tzinfo is not None for moment in alike)
    clock.now += timedelta(hours=2)  # no longer retried: not in doubt any more
    assert await ledger.alike_in_doubt(rows[0], timedelta(hours=1)) == []


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
            claims = await asyncio.gather(*(ledger.claim_delivery(DeliveryKey("main", key, "101"), lease_s=30)
                                            for key in keys for ledger in ledgers))
            return [sum(c is Claim.NEW for c in claims[i * 4:(i + 1) * 4]) for i in range(len(keys))]

        try:
            assert await race() == [1] * len(keys)
            clock.now += timedelta(seconds=31)  # every holder died
            assert await race() == [1] * len(keys)
        finally:
            for ledger in ledgers:
                await ledger.close()


async def test_a_webhooks_lookups_stay_in_its_configuration(ledger: Ledger) -> None:
    """Issue 16 point 2: beta's webhook finds nothing of acme's, by Flowroute id or by row id."""
    await ledger.record_request(dispatch())
    row = await ledger.outbound("acme", "c-1")
    assert row is not None
    await ledger.record_accepted(row.id, "mdr2-out-1", 1)
    await ledger.record_inbound(inbound())
    assert await ledger.receipt_target(BETA, "mdr2-out-1") is None
    assert await ledger.receipt_target(Scope("acme", "other-config"), "mdr2-out-1") is None
    assert await ledger.receipt_target(BETA, str(row.id)) is None  # a message id is never a row id
    assert await ledger.receipt_target(MAIN, str(row.id)) is None
    assert await ledger.record_dlr(BETA, "mdr2-out-1", "failed", "spam", "spam", 2, 1010) is None
    assert not await ledger.inbound_seen(BETA, "mdr2-in-1")
    assert await ledger.receipt_target(MAIN, "mdr2-in-1") is None  # an inbound text is no receipt's target
    found = await ledger.receipt_target(MAIN, "mdr2-out-1")
    assert found is not None and found.client_message_id == "c-1"
    assert [h.state for h in await ledger.history(row.id)] == ["queued", "accepted"]


async def test_a_failed_statement_never_quotes_its_parameters(tmp_path: Path) -> None:
    """Issue 16 point 5: PostgreSQL refuses what SQLite takes; the error (logged as "handler
    crashed") must not carry the numbers and the body it was given."""
    async with open_ledger("postgresql", tmp_path) as ledger:
        too_long = dispatch(to="+12065550199" + "7" * 40)
        with pytest.raises(Exception) as info:
            await ledger.record_request(msgspec.structs.replace(too_long, body="my secret PIN 4321"))
        text = f"{info.value!s} {info.value!r}"
        assert "2065550199" not in text and "PIN 4321" not in text and "+12065550100" not in text
