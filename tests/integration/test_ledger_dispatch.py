"""The dispatcher's claim before a send (`ledger/dispatch_ops.py`), on both backends: one
transaction reads the request's row and marks it "sending" only when it is ours to send now."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from smsbridge.events import DispatchRequest
from smsbridge.ledger import Ledger, dispatch_ops
from tests.support.ledger import BACKENDS, open_ledger

GAP = timedelta(seconds=1.06)


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        yield opened


def dispatch(client_id: str = "c-1", tenant: str = "acme") -> DispatchRequest:
    return DispatchRequest(tenant=tenant, config_id="main", client_message_id=client_id, from_extension="101",
                           from_="+12065550100", to="+12065550199", body="Your table is ready")


async def test_an_absent_request_is_recorded_and_claimed_once(ledger: Ledger) -> None:
    row, mine = await ledger.claim_send(dispatch(), gap=GAP)
    assert mine and row.dispatch_state == "sending" and row.send_started_at is not None
    stored = await ledger.outbound("acme", "c-1")
    assert stored is not None and stored.dispatch_state == "sending"
    assert stored.send_started_at == row.send_started_at
    again, mine_again = await ledger.claim_send(dispatch(), gap=GAP)  # maybe sent: look it up first
    assert not mine_again and again.dispatch_state == "sending"


async def test_after_a_lookup_found_nothing_the_request_is_claimed_again(ledger: Ledger) -> None:
    first, _ = await ledger.claim_send(dispatch(), gap=GAP)
    row, mine = await ledger.claim_send(dispatch(), gap=GAP, after_lookup=True)
    assert mine and row.send_started_at is not None and first.send_started_at is not None
    assert row.send_started_at >= first.send_started_at


async def test_a_settled_request_is_never_claimed(ledger: Ledger) -> None:
    row, _ = await ledger.claim_send(dispatch(), gap=GAP)
    assert await ledger.record_accepted(row.id, "mdr2-one", 1)
    for after_lookup in (False, True):
        again, mine = await ledger.claim_send(dispatch(), gap=GAP, after_lookup=after_lookup)
        assert not mine and again.dispatch_state == "done" and again.mdr_id == "mdr2-one"


async def test_a_request_requeued_after_an_answer_waits_the_gap(ledger: Ledger) -> None:
    row, _ = await ledger.claim_send(dispatch(), gap=GAP)
    await ledger.mark_queued(row.id, "Flowroute answered 503")
    again, mine = await ledger.claim_send(dispatch(), gap=GAP)
    assert not mine and again.dispatch_state == "queued"  # its attempt ended a moment ago
    later, mine = await ledger.claim_send(dispatch(), gap=timedelta(0))
    assert mine and later.dispatch_state == "sending"


async def test_another_tenants_request_with_the_same_client_id_is_its_own(ledger: Ledger) -> None:
    acme, _ = await ledger.claim_send(dispatch(), gap=GAP)
    globex, mine = await ledger.claim_send(dispatch(tenant="globex"), gap=GAP)
    assert mine and globex.id != acme.id and globex.tenant == "globex"
    assert globex.client_message_id == acme.client_message_id


async def test_a_flowroute_id_another_message_holds_is_refused_and_nothing_is_written(ledger: Ledger) -> None:
    first, _ = await ledger.claim_send(dispatch("c-1"), gap=GAP)
    assert await ledger.record_accepted(first.id, "mdr2-held", 1)
    second, _ = await ledger.claim_send(dispatch("c-2"), gap=GAP)
    assert not await ledger.record_accepted(second.id, "mdr2-held", 1)
    row = await ledger.outbound("acme", "c-2")
    assert row is not None and row.dispatch_state == "sending" and row.mdr_id is None and row.state == "queued"
    assert [h.state for h in await ledger.history(second.id)] == ["queued"]  # no `accepted` line either
    assert await ledger.record_accepted(second.id, "mdr2-own", 2)  # its own id goes through
    row = await ledger.outbound("acme", "c-2")
    assert row is not None and (row.dispatch_state, row.state, row.mdr_id, row.segments) == ("done", "accepted",
                                                                                             "mdr2-own", 2)


async def test_the_claim_and_the_accept_of_a_send_are_three_statements(tmp_path: Path) -> None:
    """The dispatcher's ledger cost per message (bench/README.md, issue 22): the claim of a queued
    request is one UPDATE that returns its row, the accept one guarded UPDATE and the history line."""
    async with open_ledger("sqlite", tmp_path) as opened:
        assert await opened.record_request(dispatch())
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    statements: list[str] = []

    def traced(sql: str) -> None:
        if not sql.startswith(("BEGIN", "COMMIT")):
            statements.append(sql)

    try:
        with engine.begin() as c:
            dbapi = c.connection.dbapi_connection
            assert isinstance(dbapi, sqlite3.Connection)
            dbapi.set_trace_callback(traced)
            now = datetime.now(UTC)
            row, mine = dispatch_ops.claim_send(c, dispatch(), now, now - GAP, after_lookup=False)
            claimed = len(statements)
            assert mine and row.dispatch_state == "sending" and row.send_started_at == now and row.updated_at == now
            assert dispatch_ops.accept(c, row.id, "mdr2-one", 1, now)
            dbapi.set_trace_callback(None)
    finally:
        engine.dispose()
    assert (claimed, len(statements) - claimed) == (1, 2), statements
