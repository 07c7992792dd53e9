"""How a ledger transaction reaches the database, without blocking the event loop.

An operation is a plain function over a SQLAlchemy `Connection` (see `ledger/ops.py`); a runner
runs it inside one transaction and hands back its result.

- SQLite: the standard library's driver on one thread of the runner's own. The whole
  transaction is one trip to that thread, where an async driver would make a trip per statement
  and per BEGIN and COMMIT. Writes begin with `BEGIN IMMEDIATE`: the write lock is taken (or
  waited for, up to busy_timeout) at the start, so a transaction that reads and then writes
  cannot fail half-way because another process wrote in between.
- PostgreSQL: asyncpg through SQLAlchemy's async engine; the operation runs under `run_sync`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

P = ParamSpec("P")
T = TypeVar("T")
Op = Callable[Concatenate[sa.Connection, P], T]

WRITE = "smsbridge_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)


class Runner(Protocol):
    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def close(self) -> None: ...


class SqliteRunner:
    """One connection, one thread: SQLite has one writer at a time anyway, and writers queued in
    SQLite's busy handler sleep for milliseconds, where queueing for this thread costs microseconds."""

    def __init__(self, url: sa.URL) -> None:
        self._engine = sa.create_engine(url, pool_size=1, max_overflow=0)
        sa.event.listen(self._engine, "connect", _sqlite_connect)
        sa.event.listen(self._engine, "begin", _sqlite_begin)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._on_thread(True, op, args, kwargs)

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._on_thread(False, op, args, kwargs)

    async def _on_thread(self, write: bool, op: Op[P, T], args: Any, kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run, write, op, args, kwargs)

    def _run(self, write: bool, op: Op[P, T], args: Any, kwargs: Any) -> T:
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE: write})
            with connection.begin():
                return op(connection, *args, **kwargs)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.dispose)
        self._thread.shutdown(wait=True)


class AsyncRunner:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._engine.begin() as connection:
            return await connection.run_sync(op, *args, **kwargs)

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._engine.connect() as connection:
            return await connection.run_sync(op, *args, **kwargs)

    async def close(self) -> None:
        await self._engine.dispose()


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # The driver's own transaction handling off: `_sqlite_begin` says BEGIN, SQLAlchemy says COMMIT.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")  # first: everything after may wait for a lock
    _use_wal(cursor)
    for pragma in ("foreign_keys=ON", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(WRITE) else "BEGIN")


def _use_wal(cursor: sqlite3.Cursor, attempts: int = 100) -> None:
    """WAL is a property of the file: set once, by whichever process gets there first. Switching
    needs an exclusive lock that SQLite does not wait for, so processes starting together on a new
    file retry here (seen in the benchmarks: two workers started at once, one died "locked")."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or attempt == attempts - 1:
                raise
            time.sleep(0.05)  # runs on the runner's thread, not the event loop
