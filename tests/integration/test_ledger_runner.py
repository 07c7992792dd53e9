"""The runners' group commit (SQLite and PostgreSQL): operations queued together share one
transaction, and each caller still gets its own result or its own error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from smsbridge.ledger.runner import AsyncRunner, SqliteRunner
from smsbridge.ledger.store import engine_url
from tests.support.ledger import PG_URL, pg_schema

ROWS = sa.table("rows", sa.column("k"), sa.column("v"))


def create(c: sa.Connection) -> None:
    c.exec_driver_sql("CREATE TABLE rows (k INTEGER PRIMARY KEY, v TEXT)")


def put(c: sa.Connection, k: int) -> int:
    c.execute(sa.insert(ROWS).values(k=k, v=f"v{k}"))
    return k * 2


def get(c: sa.Connection, k: int) -> str | None:
    return c.execute(sa.select(ROWS.c.v).where(ROWS.c.k == k)).scalar()


def count(c: sa.Connection) -> int:
    return int(c.execute(sa.select(sa.func.count()).select_from(ROWS)).scalar_one())


def fail(c: sa.Connection, k: int) -> None:
    put(c, k)
    raise ValueError(f"operation {k} refuses")


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[SqliteRunner]:
    opened = SqliteRunner(sa.make_url(f"sqlite:///{tmp_path / 'ledger.db'}"), batch=8)
    await opened.write(create)
    yield opened
    await opened.close()


@asynccontextmanager
async def held(runner: SqliteRunner) -> AsyncIterator[None]:
    """Keep the runner's thread busy for the block, so the calls the block starts queue up
    behind it; on leaving, let them reach the queue, then free the thread."""
    release, started = threading.Event(), threading.Event()

    def wait(_c: sa.Connection) -> None:
        started.set()
        release.wait(10)

    holder = asyncio.ensure_future(runner.read(wait))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    try:
        yield
        await asyncio.sleep(0)  # the tasks the block started ask for their calls
        await asyncio.sleep(0)  # and the calls are handed over to the thread, all at once
    finally:
        release.set()
        await holder


async def test_queued_operations_share_transactions_of_at_most_batch(runner: SqliteRunner) -> None:
    before = runner.transactions
    async with held(runner):
        calls = [asyncio.ensure_future(runner.write(put, k)) for k in range(20)]
    assert await asyncio.gather(*calls) == [k * 2 for k in range(20)]
    assert runner.transactions - before == 1 + 3  # the holder, then 20 operations in groups of at most 8
    assert await runner.read(count) == 20


async def test_an_operation_that_raises_fails_alone(runner: SqliteRunner) -> None:
    async with held(runner):
        calls = [asyncio.ensure_future(runner.write(fail if k == 3 else put, k)) for k in range(6)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ValueError) and "operation 3 refuses" in str(results[3])
    assert [r for k, r in enumerate(results) if k != 3] == [0, 2, 4, 8, 10]
    assert [await runner.read(get, k) for k in range(6)] == ["v0", "v1", "v2", None, "v4", "v5"]


async def test_an_operation_sees_the_writes_queued_before_it(runner: SqliteRunner) -> None:
    async with held(runner):
        write = asyncio.ensure_future(runner.write(put, 7))
        read = asyncio.ensure_future(runner.read(get, 7))
    assert (await write, await read) == (14, "v7")


async def test_a_caller_that_gave_up_does_not_stop_the_others(runner: SqliteRunner) -> None:
    async with held(runner):
        abandoned = asyncio.ensure_future(runner.write(put, 1))
        kept = asyncio.ensure_future(runner.write(put, 2))
        await asyncio.sleep(0)
        abandoned.cancel()
    assert await kept == 4
    assert abandoned.cancelled()
    assert await runner.read(get, 1) == "v1"  # the operation itself ran: cancelling stops the wait only


async def test_close_finishes_what_was_queued(tmp_path: Path) -> None:
    runner = SqliteRunner(sa.make_url(f"sqlite:///{tmp_path / 'ledger.db'}"))
    await runner.write(create)
    calls = [asyncio.ensure_future(runner.write(put, k)) for k in range(5)]
    await asyncio.sleep(0)
    await runner.close()
    assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="closed"):
        await runner.write(put, 9)  # refused at once, not queued for a thread that is gone
    again = SqliteRunner(sa.make_url(f"sqlite:///{tmp_path / 'ledger.db'}"))
    assert await again.read(count) == 5
    await again.close()


class ThreadKiller(BaseException):
    """Not an `Exception`: escapes the per-operation handling, as a fault of the thread would."""


def kill(_c: sa.Connection) -> None:
    raise ThreadKiller("boom")


async def test_a_stopped_thread_fails_every_waiting_and_later_call_instead_of_hanging(
    runner: SqliteRunner,
) -> None:
    assert runner.usable
    async with held(runner):
        fatal = asyncio.ensure_future(runner.write(kill))
        queued = asyncio.ensure_future(runner.write(put, 1))
    # wait_for only guards the suite against the hang this test is about
    results = await asyncio.wait_for(asyncio.gather(fatal, queued, return_exceptions=True), 10)
    for result in results:
        assert isinstance(result, RuntimeError) and "ledger thread stopped" in str(result)
        assert "ThreadKiller('boom')" in str(result)
    assert not runner.usable
    with pytest.raises(RuntimeError, match="ledger thread stopped"):
        await asyncio.wait_for(runner.read(count), 10)


# ----- PostgreSQL: the same group commit, on the async engine -------------------------------------
@pytest.fixture
async def pg_runner() -> AsyncIterator[AsyncRunner]:
    async with pg_schema() as schema:
        engine = create_async_engine(engine_url(PG_URL), connect_args={"server_settings": {"search_path": schema}})
        opened = AsyncRunner(engine, batch=8)
        await opened.write(create)
        try:
            yield opened
        finally:
            await opened.close()


async def test_postgresql_calls_made_together_share_transactions_of_at_most_batch(pg_runner: AsyncRunner) -> None:
    before = pg_runner.transactions
    calls = [asyncio.ensure_future(pg_runner.write(put, k)) for k in range(20)]
    assert await asyncio.gather(*calls) == [k * 2 for k in range(20)]
    assert pg_runner.transactions - before == 3  # 20 operations asked for at once: groups of 8, 8 and 4
    assert await pg_runner.read(count) == 20


async def test_postgresql_an_operation_that_raises_fails_alone(pg_runner: AsyncRunner) -> None:
    calls = [asyncio.ensure_future(pg_runner.write(fail if k == 3 else put, k)) for k in range(6)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ValueError) and "operation 3 refuses" in str(results[3])
    assert [r for k, r in enumerate(results) if k != 3] == [0, 2, 4, 8, 10]
    assert [await pg_runner.read(get, k) for k in range(6)] == ["v0", "v1", "v2", None, "v4", "v5"]


async def test_postgresql_an_operation_sees_the_writes_asked_for_before_it(pg_runner: AsyncRunner) -> None:
    write = asyncio.ensure_future(pg_runner.write(put, 7))
    read = asyncio.ensure_future(pg_runner.read(get, 7))
    assert (await write, await read) == (14, "v7")
    assert pg_runner.transactions == 2  # the CREATE, then both in one


async def test_postgresql_an_outage_fails_the_rest_of_a_group_without_trying_each(pg_runner: AsyncRunner) -> None:
    tried: list[int] = []

    def unreachable(_c: sa.Connection, k: int) -> None:
        tried.append(k)
        raise sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    before = pg_runner.transactions
    calls = [asyncio.ensure_future(pg_runner.write(unreachable, k)) for k in range(5)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, sa.exc.OperationalError) for r in results)
    assert tried == [0, 0]  # the group, then the first alone: the other four were not tried again
    assert pg_runner.transactions - before == 2
