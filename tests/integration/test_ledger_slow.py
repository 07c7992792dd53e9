"""A PostgreSQL that is slow but alive is not an outage: the per-transaction deadline
(`[ledger] timeout_s`) must not fail what the database is still answering. Operations here
sleep in the server (`pg_sleep`), which stands for lock waits and slow I/O."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from smsbridge.errors import LedgerUnavailable
from smsbridge.ledger import Ledger
from smsbridge.ledger.runner import AsyncRunner, unhurried
from tests.support.ledger import PG_URL, pg_schema
from tests.support.wait import eventually

TIMEOUT_S = 1.0  # [ledger] timeout_s here
OUTER_S = 60.0  # a bound around what the old code did, so it fails instead of hanging the suite


@pytest.fixture
async def slow_pg() -> AsyncIterator[str]:
    async with pg_schema() as schema:
        yield schema


def open_ledger(schema: str) -> Ledger:
    return Ledger.open(PG_URL, schema_name=schema, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)


def slow_op(c: sa.Connection) -> int:
    return int(c.execute(sa.text("SELECT 1 FROM pg_sleep(0.1)")).scalar_one())


@unhurried
def long_op(c: sa.Connection, seconds: float) -> int:  # a prune of a busy month, a migration's lock wait
    return int(c.execute(sa.text("SELECT 2 FROM pg_sleep(:s)"), {"s": seconds}).scalar_one())


def runner(ledger: Ledger) -> AsyncRunner:
    db = ledger._db._runner  # the Ledger's guard around its runner
    assert isinstance(db, AsyncRunner)
    return db


async def test_an_unhurried_operation_may_take_longer_than_timeout_s(slow_pg: str) -> None:
    """The old engine's asyncpg `command_timeout` (timeout_s) cut every statement, an unhurried
    one's too: a prune longer than timeout_s failed every round."""
    ledger = open_ledger(slow_pg)
    try:
        async with asyncio.timeout(OUTER_S):
            assert await ledger._db.write(long_op, 3 * TIMEOUT_S) == 2
    finally:
        await ledger.close()


async def test_many_callers_of_a_slow_but_alive_database_all_succeed(slow_pg: str) -> None:
    """0.1 s an operation: a group of 20 cannot commit within 1 s. The old runner failed the
    whole group, every time; now it runs it again in smaller pieces and keeps the smaller size."""
    ledger = open_ledger(slow_pg)
    db = runner(ledger)
    try:
        await ledger._db.write(slow_op)  # the pool warm: the first group is not slowed by a connect
        for _ in range(2):
            async with asyncio.timeout(OUTER_S):
                results = await asyncio.gather(*(ledger._db.write(slow_op) for _ in range(20)),
                                               return_exceptions=True)
            assert results == [1] * 20
        assert 1 <= db.limit < 10  # what fits in the deadline, with room
    finally:
        await ledger.close()


async def test_a_group_that_stops_answering_half_way_still_fails_within_two_deadlines(slow_pg: str) -> None:
    """The split is for a database that answers: once one operation outlives a whole deadline,
    the group's pieces fail at the first of them, the rest untried."""
    tried = 0

    def stuck_after_three(c: sa.Connection) -> int:
        nonlocal tried
        tried += 1
        seconds = 0.05 if tried <= 3 else 30
        return int(c.execute(sa.text("SELECT 1 FROM pg_sleep(:s)"), {"s": seconds}).scalar_one())

    ledger = open_ledger(slow_pg)
    try:
        await ledger._db.write(slow_op)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(OUTER_S):
            results = await asyncio.gather(*(ledger._db.write(stuck_after_three) for _ in range(10)),
                                           return_exceptions=True)
        assert all(isinstance(r, LedgerUnavailable) for r in results), results
        assert loop.time() - started < 2 * TIMEOUT_S + 4  # 4 s: a loaded host's scheduling
        assert tried == 5  # four in the group (the fourth stuck), then the first piece's one: no more
    finally:
        await ledger.close()


def long_ops_running(c: sa.Connection) -> bool:
    query = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT 2 FROM pg_sleep%'"
    return int(c.execute(sa.text(query)).scalar_one()) > 0


async def test_close_ends_an_unhurried_operation_in_flight(slow_pg: str) -> None:
    """The old close waited for it: a prune in flight held up the shutdown (up to 10 min)."""
    ledger = open_ledger(slow_pg)
    watcher = open_ledger(slow_pg)
    prune = asyncio.ensure_future(ledger._db.write(long_op, 120))
    try:
        await eventually(lambda: watcher._db.read(long_ops_running), what="the unhurried statement runs")
    finally:
        await watcher.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(OUTER_S):  # the old close waited for the prune: 120 s
        await ledger.close()
    assert loop.time() - started < TIMEOUT_S + 4
    with pytest.raises(LedgerUnavailable):
        await prune


SLOW_COMMIT = [
    "CREATE TABLE marks (k int NOT NULL)",
    """CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$""",
    """CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON marks
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()""",
]


async def test_a_group_whose_commit_outlives_the_deadline_is_not_run_again(slow_pg: str) -> None:
    """Every operation ran and the COMMIT was sent: it may commit (here it does, once its
    trigger has slept). Running the group again would run its operations twice; its callers get
    the outage instead, as for any transaction in doubt."""
    tried = 0

    def mark(c: sa.Connection, k: int) -> None:
        nonlocal tried
        tried += 1
        c.execute(sa.text("INSERT INTO marks VALUES (:k)"), {"k": k})

    def marks(c: sa.Connection) -> int:
        return int(c.execute(sa.text("SELECT count(*) FROM marks")).scalar_one())

    setup = Ledger.open(PG_URL, schema_name=slow_pg)
    ledger = open_ledger(slow_pg)
    try:
        for statement in SLOW_COMMIT:
            await setup._db.write(lambda c, s=statement: c.execute(sa.text(s)))
        await ledger._db.read(marks)  # the pool warm
        async with asyncio.timeout(OUTER_S):
            results = await asyncio.gather(*(ledger._db.write(mark, k) for k in range(5)), return_exceptions=True)
        assert all(isinstance(r, LedgerUnavailable) for r in results), results
        assert tried == 5 and runner(ledger).limit == 64
        await eventually(lambda: setup._db.read(marks), timeout=OUTER_S, what="the COMMIT in doubt went through")
        assert await setup._db.read(marks) == 5
    finally:
        await ledger.close()
        await setup.close()
