"""Ledgers for tests: SQLite in a temp file, PostgreSQL in a throwaway schema.

A test's schema is dropped when its `pg_schema` / `ledger_location` block ends. Bridges and
processes the test started should be stopped before that (started inside the block and stopped
in it, or a ledger fixture set up before `start_bridge`, so torn down after it). When one still
holds a lock in the schema, `DROP SCHEMA … CASCADE` would wait for it, or deadlock with it (it
locks table after table while the bridge's transaction wants another): the drop therefore waits
at most `LOCK_TIMEOUT` per try, and between tries ends the connections that hold locks in that
schema (only this test's bridges use it), so teardown finishes instead of hanging or failing.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from smsbridge.ledger import Ledger
from smsbridge.ledger.store import engine_url

LOCK_TIMEOUT = "2s"
DROP_ATTEMPTS = 10
RETRY_SQLSTATES = {"55P03", "40P01"}  # lock_not_available (the lock timeout), deadlock_detected
PG_URL = os.environ.get("SMSBRIDGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def pg_reachable() -> bool:
    parts = urlsplit(PG_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=2):
            return True
    except OSError:
        return False


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    if not pg_reachable():
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: start it or set SMSBRIDGE_TEST_PG_URL. "
                    "Ledger tests never skip.", pytrace=False)
    name = f"sbtest_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(engine_url(PG_URL))
    async with admin.begin() as connection:
        await connection.execute(sa.schema.CreateSchema(name))
    try:
        yield name
    finally:
        try:
            await drop_schema(admin, name)
        finally:
            await admin.dispose()


async def drop_schema(admin: AsyncEngine, name: str) -> None:
    """Drop `name` and all in it, ending the connections that still hold locks in it if need be."""
    for attempt in range(DROP_ATTEMPTS):
        try:
            async with admin.begin() as connection:
                await connection.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                await connection.execute(sa.schema.DropSchema(name, cascade=True))
            return
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRY_SQLSTATES or attempt + 1 == DROP_ATTEMPTS:
                raise
        async with admin.begin() as connection:
            await connection.execute(sa.text(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :name AND l.pid <> pg_backend_pid()"), {"name": name})


@asynccontextmanager
async def ledger_location(backend: str, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    """(url, schema) for a fresh, empty ledger of that backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}", None
    else:
        async with pg_schema() as schema:
            yield PG_URL, schema


@asynccontextmanager
async def open_ledger(backend: str, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with ledger_location(backend, tmp_path) as (url, schema):
        ledger = Ledger.open(url, schema_name=schema)
        await ledger.upgrade()
        try:
            yield ledger
        finally:
            await ledger.close()
