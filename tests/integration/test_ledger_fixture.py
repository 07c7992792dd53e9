"""The test ledgers' own teardown: a schema still in use by a straggler is dropped, not waited on."""

from __future__ import annotations

import asyncio
import contextlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from smsbridge.ledger.store import engine_url
from tests.support.ledger import PG_URL, pg_schema


async def test_a_schema_is_dropped_while_a_straggler_holds_a_lock_in_it() -> None:
    """A bridge the test did not stop yet, mid-transaction on a table of the schema: the drop
    used to wait for it for ever (or deadlock with it); now it ends that connection and drops."""
    straggler = create_async_engine(engine_url(PG_URL))
    connection = await straggler.connect()
    try:
        async def use_and_drop() -> str:
            async with pg_schema() as schema:
                await connection.execute(sa.text(f"CREATE TABLE {schema}.t (id int)"))
                await connection.commit()
                await connection.execute(sa.text(f"SELECT * FROM {schema}.t"))  # holds a lock until it ends
            return schema

        schema = await asyncio.wait_for(use_and_drop(), timeout=60)
        checker = create_async_engine(engine_url(PG_URL))
        async with checker.connect() as check:
            found = await check.scalar(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": schema})
        await checker.dispose()
        assert found == 0
    finally:
        with contextlib.suppress(sa.exc.DBAPIError):  # the straggler's connection was ended
            await connection.close()
        await straggler.dispose()
