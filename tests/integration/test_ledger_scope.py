"""Flowroute ids scoped per SMS configuration in the ledger (migration 6), on SQLite and
PostgreSQL: two configurations' texts with one id are two texts, with claims, order and history
of their own; an inbound text's id (what a webhook said) never stands for or stops a send; and a
ledger release 5 left, rows and all, migrates to that."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from smsbridge.events import DispatchRequest, InboundDelivery, InboundMessage
from smsbridge.ledger import Claim, DeliveryKey, Ledger, Scope
from smsbridge.ledger.order import Turn
from smsbridge.ledger.schema import MIGRATIONS
from tests.support import ledger_v5
from tests.support.ledger import BACKENDS, ledger_location, open_ledger

MAIN, BETA = Scope("acme", "main"), Scope("beta", "beta-main")
DID = {MAIN: "+12065550100", BETA: "+13125550100"}
MDR = "mdr2-4e5435f325d9431f9e64118b20895b08"
MOBILE = "+12065550199"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        opened._now = Clock()  # type: ignore[method-assign]
        yield opened


def inbound(scope: Scope, mdr_id: str = MDR) -> InboundMessage:
    return InboundMessage(tenant=scope.tenant, config_id=scope.config_id, mdr_id=mdr_id, from_=MOBILE,
                          to=DID[scope], body=f"for {scope.tenant}")


def delivery(scope: Scope, mdr_id: str = MDR) -> InboundDelivery:
    return InboundDelivery(tenant=scope.tenant, config_id=scope.config_id, mdr_id=mdr_id, from_=MOBILE,
                           to=DID[scope], extension="101", body=f"for {scope.tenant}", received_at=T0)


async def test_one_flowroute_id_in_two_configurations_is_two_texts_with_claims_of_their_own(ledger: Ledger) -> None:
    assert await ledger.record_inbound(inbound(MAIN))
    assert not await ledger.inbound_seen(BETA, MDR)
    assert await ledger.record_inbound(inbound(BETA))  # was: False, the id taken by acme's text
    assert not await ledger.record_inbound(inbound(BETA))  # beta's own resend still is one
    assert await ledger.inbound_seen(BETA, MDR) and await ledger.inbound_seen(MAIN, MDR)
    assert len(await ledger.enqueue_deliveries([delivery(MAIN), delivery(BETA)])) == 2  # each due in its own order
    acme, beta = DeliveryKey("main", MDR, "101"), DeliveryKey("beta-main", MDR, "101")
    assert await ledger.claim_turn(acme, 30) == (Turn.GO, [])
    assert await ledger.claim_turn(beta, 30) == (Turn.GO, [])  # was: BUSY, acme's claim
    assert await ledger.delivered_in_turn(acme) == []
    assert await ledger.claim_turn(acme, 30) == (Turn.DONE, [])
    assert await ledger.claim_turn(beta, 30) == (Turn.BUSY, [])  # its own lease, not acme's "delivered"
    assert [(d.extension, d.state) for d in await ledger.deliveries("beta-main", MDR)] == [("101", "delivering")]
    rows = {s: await ledger.find(MDR, tenant=s.tenant) for s in (MAIN, BETA)}
    assert {s: (r.config_id, r.state, r.body) for s, r in rows.items() if r} == {
        MAIN: ("main", "delivered", "for acme"), BETA: ("beta-main", "received", "for beta")}
    await ledger.release_delivery(beta)
    assert await ledger.claim_delivery(beta, 30) is Claim.NEW
    await ledger.delivered(beta)
    acme_row, beta_row = rows[MAIN], rows[BETA]
    assert acme_row is not None and beta_row is not None
    assert [h.state for h in await ledger.history(acme_row.id)] == ["received", "delivered"]  # once, not twice
    assert [h.state for h in await ledger.history(beta_row.id)] == ["received", "delivered"]
    assert await ledger.last_did("beta", MOBILE, "101") == DID[BETA]
    assert await ledger.last_did("acme", MOBILE, "101") == DID[MAIN]


async def test_an_inbound_texts_id_never_stands_for_or_stops_a_send(ledger: Ledger) -> None:
    """beta's webhook posts, as an inbound text, the id Flowroute gives acme's send."""
    assert await ledger.record_inbound(inbound(BETA, "mdr2-out-1"))
    # The dispatcher's lookup after a crash found the send: it is not "another message's" (was:
    # held, so the lookup concluded "not sent" and the text went to the customer twice).
    assert await ledger.held_mdrs(["mdr2-out-1"]) == set()
    await ledger.record_request(DispatchRequest(tenant="acme", config_id="main", client_message_id="c-1",
                                                from_extension="101", from_=DID[MAIN], to=MOBILE, body="hi"))
    row = await ledger.outbound("acme", "c-1")
    assert row is not None
    assert await ledger.record_accepted(row.id, "mdr2-out-1", 1)  # was: False, failed as "send_in_doubt"
    assert await ledger.held_mdrs(["mdr2-out-1"]) == {"mdr2-out-1"}
    # A lookup by that id (`GET /v1/messages/{id}`, `smsbridge messages`) shows the send, though
    # the inbound text holding it was recorded first (was: whichever row the database met first).
    for tenant in (None, "acme"):
        shown = await ledger.find("mdr2-out-1", tenant=tenant)
        assert shown is not None and (shown.tenant, shown.direction) == ("acme", "outbound")
    beta = DeliveryKey("beta-main", "mdr2-out-1", "101")
    assert await ledger.claim_delivery(beta, 30) is Claim.NEW
    await ledger.delivered(beta)  # beta's text delivered: acme's send is not (was: "delivered to extension 101")
    assert [h.state for h in await ledger.history(row.id)] == ["queued", "accepted"]
    assert await ledger.record_dlr(BETA, "mdr2-out-1", "failed", "spam", "spam", 2, 1010) is None
    found = await ledger.record_dlr(MAIN, "mdr2-out-1", "delivered", None, None, 2, 1004)
    assert found is not None and found.id == row.id
    beta_row = await ledger.find("mdr2-out-1", tenant="beta")
    assert beta_row is not None and [h.state for h in await ledger.history(beta_row.id)] == ["received", "delivered"]


# ----- migration 6 on a ledger release 5 left ------------------------------------------------------
def rows_at_version_5(c: sa.Connection) -> None:
    """Texts in every state a claim can be found in: with its order row and message, with only
    one of them, with neither (both pruned); an outbound send; beta's text."""
    def message(id_: int, scope: Scope, mdr_id: str, direction: str = "inbound",
                state: str = "received") -> dict[str, Any]:
        return dict(id=id_, direction=direction, tenant=scope.tenant, config_id=scope.config_id, mdr_id=mdr_id,
                    from_number=MOBILE, to_number=DID[scope], body="b", is_mms=False, state=state, created_at=T0,
                    updated_at=T0, client_message_id=f"c-{id_}" if direction == "outbound" else None)
    v5 = ledger_v5
    c.execute(sa.insert(v5.messages), [message(1, MAIN, MDR, state="delivered"),
                                       message(2, MAIN, "mdr2-out", "outbound", "accepted"),
                                       message(3, BETA, "mdr2-b"), message(4, MAIN, "mdr2-c")])
    c.execute(sa.insert(v5.status_history), [
        dict(id=n, message_id=m, state=s, at=T0)
        for n, (m, s) in enumerate([(1, "received"), (1, "delivered"), (2, "queued"), (2, "accepted"),
                                    (3, "received"), (4, "received")], start=1)])
    c.execute(sa.insert(v5.delivery_order), [
        dict(mdr_id=m, extension=e, conversation=f"{conf}:{DID[MAIN]}:{MOBILE}:{e}", received_at=T0, state=s,
             body=b"x", updated_at=T0)
        # beta's text with acme's id to another extension: release 5 keyed order rows by (id, extension)
        for m, e, conf, s in [(MDR, "100", "beta-main", "live"), (MDR, "101", "main", "done"),
                              ("mdr2-b", "101", "beta-main", "live"),
                              ("mdr2-orphan", "102", "main", "waiting")]])
    c.execute(sa.insert(v5.deliveries), [
        dict(mdr_id=m, extension=e, state=s, lease_until=T0 + timedelta(seconds=30), updated_at=T0)
        for m, e, s in [(MDR, "101", "delivered"), ("mdr2-b", "101", "delivering"),
                        ("mdr2-orphan", "102", "delivering"), ("mdr2-c", "101", "delivered"),
                        ("mdr2-gone", "101", "delivered")]])
    if c.dialect.name == "postgresql":  # the ids were given here: the sequences as the server would have left them
        for table in ("messages", "status_history"):
            c.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))


def shape(c: sa.Connection) -> dict[str, Any]:
    """What a migrated ledger must share with a new one: columns, keys, constraints, indexes."""
    inspector = sa.inspect(c)
    return {table: (sorted(col["name"] for col in inspector.get_columns(table)),
                    inspector.get_pk_constraint(table)["constrained_columns"],
                    sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
                    sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)
                           if not i["name"].startswith("sqlite_autoindex")),
                    [(f["referred_table"], f["options"].get("ondelete")) for f in inspector.get_foreign_keys(table)])
            for table in ("messages", "status_history", "deliveries", "delivery_order")}


def contents(c: sa.Connection) -> dict[str, Any]:
    return {
        "claims": sorted(c.execute(sa.text("SELECT config_id, mdr_id, extension, state FROM deliveries")).all()),
        "order": sorted(c.execute(sa.text("SELECT config_id, mdr_id, extension, state FROM delivery_order")).all()),
        "messages": sorted(c.execute(sa.text("SELECT id, config_id, direction, mdr_id FROM messages")).all()),
        "history": sorted(c.execute(sa.text("SELECT id, message_id, state FROM status_history")).all()),
    }


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_ledger_release_5_left_with_rows_in_it_migrates_to_ids_per_configuration(
    backend: str, tmp_path: Path,
) -> None:
    async with ledger_location(backend, tmp_path) as (url, schema):
        ledger = Ledger.open(url, schema_name=schema)
        ledger._now = Clock()  # type: ignore[method-assign]
        try:
            await ledger.upgrade()
            fresh = await ledger._db.read(shape)
            await ledger._db.write(ledger_v5.as_at_version_5)
            await ledger._db.write(rows_at_version_5)
            assert await ledger.version() == 5
            assert await ledger.upgrade() == [6]
            assert await ledger._db.read(shape) == fresh
            async with open_ledger(backend, tmp_path / "after") as new:  # the migration left the metadata whole
                assert await new._db.read(shape) == fresh
            migrated = await ledger._db.read(contents)
            assert migrated == {
                "claims": [("", "mdr2-gone", "101", "delivered"), ("beta-main", "mdr2-b", "101", "delivering"),
                           ("main", MDR, "101", "delivered"), ("main", "mdr2-c", "101", "delivered"),
                           ("main", "mdr2-orphan", "102", "delivering")],
                "order": [("beta-main", MDR, "100", "live"), ("beta-main", "mdr2-b", "101", "live"),
                          ("main", MDR, "101", "done"),
                          ("main", "mdr2-orphan", "102", "waiting")],
                "messages": [(1, "main", "inbound", MDR), (2, "main", "outbound", "mdr2-out"),
                             (3, "beta-main", "inbound", "mdr2-b"), (4, "main", "inbound", "mdr2-c")],
                "history": [(1, 1, "received"), (2, 1, "delivered"), (3, 2, "queued"), (4, 2, "accepted"),
                            (5, 3, "received"), (6, 4, "received")],
            }
            # Idempotent: run again (as by a second process that found it not recorded yet), nothing moves.
            await ledger._db.write(MIGRATIONS[5][2])
            assert await ledger._db.read(shape) == fresh and await ledger._db.read(contents) == migrated
            assert await ledger.upgrade() == []
            # The rows work as before, and as release 6: beta may now have acme's id.
            assert await ledger.claim_delivery(DeliveryKey("main", MDR, "101"), 30) is Claim.DONE
            assert await ledger.claim_delivery(DeliveryKey("beta-main", "mdr2-b", "101"), 30) is Claim.BUSY
            assert await ledger.claim_turn(DeliveryKey("main", "mdr2-orphan", "102"), 30) == (Turn.BUSY, [])
            assert await ledger.record_inbound(inbound(BETA)) and not await ledger.record_inbound(inbound(MAIN))
            added = await ledger.find(MDR, tenant="beta")
            assert added is not None and added.id > 4
            assert await ledger.prune(timedelta(seconds=-1)) == 5  # the copied rows prune as any others
            left = await ledger._db.read(contents)
            assert (left["claims"], left["messages"], left["history"]) == ([], [], [])  # the order keeps undone texts
        finally:
            await ledger.close()
