"""Ledgers for tests: SQLite in a temp file, PostgreSQL in a throwaway schema."""

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
from sqlalchemy.ext.asyncio import create_async_engine

from smsbridge.ledger import Ledger
from smsbridge.ledger.store import engine_url

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
        async with admin.begin() as connection:
            await connection.execute(sa.schema.DropSchema(name, cascade=True))
        await admin.dispose()


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
