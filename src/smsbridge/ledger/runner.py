"""How a ledger transaction reaches the database, without blocking the event loop.

An operation is a plain function over a SQLAlchemy `Connection` (see `ledger/ops.py`); a runner
runs it inside a transaction and hands back its result once that transaction has committed.

- SQLite: the standard library's driver on one thread of the runner's own. An operation is one
  trip to that thread, where an async driver would make a trip per statement and per BEGIN and
  COMMIT; and the operations queued for the thread at the same moment share one transaction
  (group commit, see `SqliteRunner`). Writes begin with `BEGIN IMMEDIATE`: the write lock is
  taken (or waited for, up to busy_timeout) at the start, so a transaction that reads and then
  writes cannot fail half-way because another process wrote in between.
- PostgreSQL: asyncpg through SQLAlchemy's async engine, under `run_sync`; the operations asked
  for while a transaction runs share the next one (group commit, see `AsyncRunner`). Each
  transaction has a deadline (`[ledger] timeout_s`, see `Deadline`): a database that stops
  answering fails it as an outage instead of hanging it.

Operations sharing a transaction run one after another, in the order they were asked for, as
they would in transactions of their own; none of them sees its result before the COMMIT.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("smsbridge.ledger")

P = ParamSpec("P")
T = TypeVar("T")
Op = Callable[Concatenate[sa.Connection, P], T]
F = TypeVar("F", bound=Callable[..., Any])

WRITE = "smsbridge_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)


class Runner(Protocol):
    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    def start_write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def close(self) -> None: ...

    @property
    def usable(self) -> bool: ...


class SqliteRunner:
    """One connection on one thread of its own, which runs transactions in groups (group commit).

    SQLite has one writer at a time, across every process on the file. A writer that finds the
    lock taken sleeps in SQLite's busy handler for a millisecond or more, so under load, processes
    taking the lock once per operation spend much of their time asleep. Here the thread takes
    every operation queued since its last transaction (up to `batch`) and runs them in one: one
    BEGIN, one COMMIT, one wait for the lock, and one wake-up of the event loop for all of them.
    Each caller still gets its own result, only once the transaction holding its writes has
    committed. If an operation raises, or the COMMIT fails, the group is rolled back and its
    operations run again one transaction each, so that one operation's error is its own.

    The calls an event loop makes during one round of its callbacks are handed to the thread
    together at the end of that round (`_hand_over`), and the thread keeps one connection for
    its life: each wake-up of the thread, and each check-out of a connection, cost more than
    the statements of a relayed send's row (see bench/README.md, "The relay benchmark").

    Should the thread itself stop on an error outside any operation, every caller waiting and every
    later call gets a `RuntimeError` saying so (rather than waiting for ever), and `usable` is
    False, which `/readyz` reports."""

    def __init__(self, url: sa.URL, *, batch: int = 64) -> None:
        # hide_parameters: a failed statement's error text would quote its parameters (numbers, bodies).
        self._engine = sa.create_engine(url, pool_size=1, max_overflow=0, hide_parameters=True)
        sa.event.listen(self._engine, "connect", _sqlite_connect)
        sa.event.listen(self._engine, "begin", _sqlite_begin)
        self._batch = batch
        self._connection: sa.Connection | None = None  # the thread's own, kept between transactions
        self._closed = False
        self._broken: str | None = None  # why the thread stopped, if it stopped on an error
        self._lock = threading.Lock()  # a call is queued before the thread fails what is queued, or refused
        self.transactions = 0  # how many it has begun: fewer than operations, under load
        # Each item is one hand-over's jobs (`_hand_over`), or None to stop: one `put`, and so at
        # most one wake-up of the thread, per hand-over rather than per job.
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._backlog: collections.deque[_Job | None] = collections.deque()  # taken off `_queue`; the thread's own
        # what each event loop asked for since its last hand-over (`_hand_over`), under `_lock`
        self._waiting: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._thread = threading.Thread(target=self._serve, name="ledger", daemon=True)
        self._thread.start()

    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._submit(True, op, args, kwargs)

    def start_write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """`write`, asked for now: the caller awaits the result later, without a task of its own."""
        return self._submit(True, op, args, kwargs)

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._submit(False, op, args, kwargs)

    @property
    def usable(self) -> bool:
        return self._broken is None

    def _submit(self, write: bool, op: Op[P, T], args: Any, kwargs: Any) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._broken is not None:
                raise RuntimeError(self._broken)
            waiting = self._waiting.get(loop)
            if waiting is None:
                self._waiting[loop] = waiting = []
                loop.call_soon(self._hand_over, loop)
            waiting.append(_Job(write, op, args, kwargs, loop, future))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Queue for the thread what `loop` asked for during its last round of callbacks (every
        loop's, for None). One wake-up of the thread for all of them, not one per operation: each
        wake-up costs both threads a switch, and the thread then takes them in one transaction."""
        with self._lock:
            jobs = [job for key in ([loop] if loop else list(self._waiting)) for job in self._waiting.pop(key, [])]
            if self._broken is not None:
                _settle([(None, RuntimeError(self._broken)) for _ in jobs], jobs)
                return
            if jobs:
                self._queue.put(jobs)

    async def close(self) -> None:
        """Finish what is queued, then close the connection and the thread."""
        self._closed = True
        self._hand_over(None)
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _serve(self) -> None:
        group: list[_Job] = []
        try:
            while True:
                jobs = self._take_queued(self._batch)
                stop = jobs[-1] is None
                group = [job for job in jobs if job is not None]
                if group:
                    _settle(self._run(group), group)
                group = []
                if stop:
                    self._dispose()
                    return
        except BaseException as exc:  # noqa: BLE001 - nobody would ever answer the callers
            self._fail_all(group, exc)

    def _take_queued(self, limit: float, *, wait: bool = True) -> list[_Job | None]:
        """What is queued, oldest first, up to `limit` and never past the stop mark (None), which
        ends the list when reached; with `wait`, waits for something if nothing is queued. What
        is past `limit` stays in `_backlog` for the next group."""
        backlog = self._backlog
        if wait and not backlog:
            self._receive(self._queue.get())
        while True:
            try:
                self._receive(self._queue.get_nowait())
            except queue.Empty:
                break
        jobs: list[_Job | None] = []
        while backlog and len(jobs) < limit and (not jobs or jobs[-1] is not None):
            jobs.append(backlog.popleft())
        return jobs

    def _receive(self, item: list[_Job] | None) -> None:
        if item is None:
            self._backlog.append(None)
        else:
            self._backlog.extend(item)

    def _fail_all(self, group: list[_Job], cause: BaseException) -> None:
        """The thread is stopping on an error: fail the group it held and everything queued."""
        log.critical("ledger thread stopped; every ledger call will fail", error=repr(cause))
        with self._lock:
            self._broken = f"the ledger thread stopped: {cause!r}"
            group += [job for job in self._take_queued(math.inf, wait=False) if job is not None]
        _settle([(None, RuntimeError(self._broken)) for _ in group], group)
        self._dispose()

    def _dispose(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._engine.dispose()

    def _run(self, group: list[_Job]) -> list[_Outcome]:
        """The group in one transaction; if that fails, each of its operations in one of its own."""
        try:
            return [(value, None) for value in self._transaction(group)]
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            if len(group) == 1:
                return [(None, exc)]
            return [outcome for job in group for outcome in self._run([job])]

    def _transaction(self, group: list[_Job]) -> list[Any]:
        self.transactions += 1
        # One connection for the thread's life: a check-out and check-in (with its ROLLBACK) per
        # transaction cost as much as the transaction's own statements.
        if self._connection is None or self._connection.closed or self._connection.invalidated:
            self._connection = self._engine.connect()
        connection = self._connection
        # BEGIN and COMMIT on the driver: SQLAlchemy's transaction (events, execution options,
        # its state machine) cost more than a relayed send's INSERT. A statement run through
        # `Connection.execute` makes SQLAlchemy begin too; `_sqlite_begin` then sees the driver's
        # transaction open and adds nothing, and the COMMIT goes through SQLAlchemy.
        dbapi = connection.connection.dbapi_connection
        assert isinstance(dbapi, sqlite3.Connection)
        dbapi.execute("BEGIN IMMEDIATE" if any(job.write for job in group) else "BEGIN")
        try:
            results = [job.op(connection, *job.args, **job.kwargs) for job in group]
            if connection.in_transaction():
                connection.commit()
            else:
                dbapi.commit()
        except BaseException:
            if connection.in_transaction():
                connection.rollback()
            else:
                dbapi.rollback()
            raise
        return results


class _Job(NamedTuple):
    write: bool
    op: Op[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_Outcome = tuple[Any, BaseException | None]


def _settle(outcomes: list[_Outcome], group: list[_Job]) -> None:
    """Hand the results to their event loops: one wake-up per loop, not one per operation."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
    for job, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job.future, outcome))
    for loop, results in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, results)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _deliver(results: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for future, (value, error) in results:
        if future.done():  # cancelled by its caller, or already failed by a stopping thread
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


DEFAULT_TIMEOUT_S = 5.0
UNHURRIED_TIMEOUT_S = 600.0
_UNHURRIED = "smsbridge_unhurried"


def unhurried(op: F) -> F:
    """Marks an operation that may take minutes (a prune after a busy month, a migration). On
    PostgreSQL it runs in a transaction of its own beside the groups, not among them, where it
    would hold back every caller of the process behind it, with `UNHURRIED_TIMEOUT_S` as its
    deadline instead of `[ledger] timeout_s`."""
    setattr(op, _UNHURRIED, True)
    return op


# The deadline of the transaction the current task runs (`AsyncRunner._transaction`); the pool's
# events, run in SQLAlchemy's greenlet within the same context, attach the connection to it.
_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("ledger_deadline", default=None)


class TransactionTimeout(TimeoutError):
    """A transaction ran past its deadline and its connection was ended: an outage (`is_outage`).
    Nothing is known of its outcome when the COMMIT was already sent (see `AsyncRunner`).
    `done`: how many of its operations had run, which tells a slow database from a silent one."""

    def __init__(self, message: str, done: int = 0) -> None:
        super().__init__(message)
        self.done = done


class Deadline:
    """The time limit of the transaction in flight: when it runs out, the asyncpg connection the
    transaction uses is terminated (the socket aborted; no graceful close, no cancel request).

    Why not `asyncio.timeout` around the transaction, or asyncpg's `command_timeout`: both
    cancel a query that asyncpg then tries to cancel at the server over a new connection, and
    SQLAlchemy then rolls back, or closes gracefully, over the connection that stopped
    answering: each a wait of its own, across a partition. A terminated connection instead
    fails whatever awaits it at once (`ConnectionDoesNotExistError`); SQLAlchemy sees a
    disconnect, invalidates the connection (it never goes back to the pool) and skips the
    ROLLBACK; the next transaction gets a new connection.

    The clock starts before the connection is taken from the pool, so a new connection's set-up
    queries count too; the connection is attached when the pool hands it over (`attach`). Only
    opening one (TCP, TLS, authentication) cannot be ended from here: asyncpg's own connect
    timeout (`[ledger] connect_timeout_s`) bounds that, and a connection opened after the
    deadline is terminated as soon as it is attached."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.expired = False
        self.why = f"no answer from the database within {timeout_s:g} s"  # the TransactionTimeout's text
        self.done = 0  # operations of the group that ran before the deadline (`_run_all`)
        self._connection: Any = None  # asyncpg.Connection, once the pool handed one over
        self._handle = loop.call_later(timeout_s, self._expire)

    def attach(self, connection: Any) -> None:
        self._connection = connection
        if self.expired:
            connection.terminate()

    def cancel(self) -> None:
        self._handle.cancel()

    def end(self, why: str) -> None:
        """Run out now (the runner is closing): the connection is terminated as at the deadline."""
        self._handle.cancel()
        self.why = why
        self._expire()

    def _expire(self) -> None:
        self.expired = True
        if self._connection is not None:
            self._connection.terminate()


class AsyncRunner:
    """PostgreSQL through SQLAlchemy's async engine (asyncpg), with group commit as `SqliteRunner`:
    the operations asked for while a transaction runs wait, and then run together in the next one
    (up to `batch`), one transaction in flight per process. Each operation alone was a BEGIN, a
    COMMIT (with its WAL flush), a pool check-out (with its ping) and their round trips: measured
    at 54 texts/s for the inbound path's ledger calls, against 1,300-1,500 on SQLite (64 callers).

    One transaction at a time (`unhurried` operations aside) also means the conversation locks
    (`order._lock`) a group takes are never waited for by another group of the same process. A
    group that fails is run again one operation per transaction, so that one operation's error is
    its own; once one of those meets an outage (the database unreachable), the rest of the group
    gets the same error untried.

    Each transaction, from the pool check-out to the COMMIT's answer, has `timeout_s` (a
    `Deadline`). A group that runs out of it before any of its operations ran fails as a whole
    with `TransactionTimeout`, untried one by one: each would wait as long again. So a caller of
    a database that stopped answering waits about two deadlines: the transaction in flight when
    it asked, then its own (three when the database stops half-way through its group: see below).

    A group that runs out after some but not all of its operations ran met a database that
    answers, but too slowly for a group that large (lock waits, I/O: a full group at 80 ms an
    operation is past 5 s). Failing it as a whole would fail every full group for as long as that
    lasts, its callers retrying into full groups again: no progress at all. So the group is run again in pieces of
    half what got done in time, the limit for later groups drops to that size, and it doubles
    again after each full group that commits within a quarter of the deadline. The pieces run in
    order; the first that fails as an outage fails the rest untried. A group that ran out after
    all its operations ran is not run again: its COMMIT may have been sent (in doubt, below), and
    its callers learn of that as an outage, as after any other.

    A group whose deadline ran out after its COMMIT was sent is in doubt: it may have committed.
    Its callers get the outage all the same and do what they do after any outage, which is to run
    the operation again later; every operation is written to be run again after it committed
    (an INSERT that finds its row answers as for a repeat; see each caller). The server's side
    of an abandoned transaction holds its locks until the server notices: the engine is opened
    with `idle_in_transaction_session_timeout` set (`ledger/store.py`) so that takes seconds,
    not the hours of TCP keepalive.

    A pooled connection is not pinged before use (that ping could hang too, outside any
    deadline): one that asyncpg already knows closed (the server restarted, the socket reset) is
    replaced at check-out (`_checked_out`); one that silently stopped answering fails its
    transaction at the deadline, and is discarded."""

    def __init__(self, engine: AsyncEngine, *, batch: int = 64, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._engine = engine
        self._batch = batch
        self.limit = batch  # the size of the next group: less than batch after a slow group timed out
        self._timeout_s = timeout_s
        self._pending: list[_Job] = []
        self._worker: asyncio.Task[None] | None = None
        self._alone: set[asyncio.Task[None]] = set()  # unhurried operations in flight
        self._alone_deadlines: set[Deadline] = set()  # theirs, ended by `close`
        self._closing = False
        # every asyncpg connection the engine opened, so `close` can end what its graceful close
        # of the pool would wait for across a partition
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.transactions = 0
        # First among the "connect" listeners: a new connection's set-up queries (the dialect's
        # codecs) run under the deadline too.
        sa.event.listen(engine.sync_engine, "connect", self._connected, insert=True)
        sa.event.listen(engine.sync_engine, "checkout", self._checked_out)

    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._submit(True, op, args, kwargs)

    def start_write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """`write`, asked for now: the caller awaits the result later, without a task of its own."""
        return self._submit(True, op, args, kwargs)

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._submit(False, op, args, kwargs)

    def _submit(self, write: bool, op: Op[P, T], args: Any, kwargs: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(write, op, args, kwargs, loop, future)
        if getattr(op, _UNHURRIED, False):
            task = loop.create_task(self._run_alone(job))
            self._alone.add(task)
            task.add_done_callback(self._alone.discard)
            return future
        self._pending.append(job)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return future

    async def _run_alone(self, job: _Job) -> None:
        try:
            if self._closing:
                raise TransactionTimeout("the ledger closed before it ran")
            value = (await self._transaction([job], UNHURRIED_TIMEOUT_S, self._alone_deadlines))[0]
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            _deliver([(job.future, (None, exc))])
        except BaseException as exc:  # cancelled (the loop is closing): nobody is left to answer
            _deliver([(job.future, (None, exc))])
            raise
        else:
            _deliver([(job.future, (value, None))])

    async def _drain(self) -> None:
        while self._pending:
            group, self._pending = self._pending[:self.limit], self._pending[self.limit:]
            try:
                outcomes = await self._run(group)
            except BaseException as exc:  # cancelled (the loop is closing): nobody is left to answer
                outcomes = [(None, exc) for _ in group]
                _deliver([(job.future, outcome) for job, outcome in zip(group, outcomes, strict=True)])
                raise
            _deliver([(job.future, outcome) for job, outcome in zip(group, outcomes, strict=True)])

    async def _run(self, group: list[_Job]) -> list[_Outcome]:
        started = asyncio.get_running_loop().time()
        try:
            values = await self._transaction(group)
        except TransactionTimeout as exc:
            if len(group) == 1 or exc.done in (0, len(group)):  # silent, or the COMMIT in doubt
                return [(None, exc) for _ in group]
            # Slow, not silent, and nothing committed: some operations ran, the COMMIT was not
            # sent. Pieces that fit (see the class's docstring).
            self.limit = max(1, exc.done // 2)
            log.warning("ledger group ran out of time with the database answering: run again in smaller groups",
                        operations=len(group), done_in_time=exc.done, limit=self.limit)
            pieces = [group[at:at + self.limit] for at in range(0, len(group), self.limit)]
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            if len(group) == 1:
                return [(None, exc)]
            pieces = [[job] for job in group]
        else:
            quick = asyncio.get_running_loop().time() - started < self._timeout_s / 4
            if quick and len(group) >= self.limit and self.limit < self._batch:
                self.limit = min(self._batch, 2 * self.limit)
            return [(value, None) for value in values]
        outcomes: list[_Outcome] = []
        for piece in pieces:
            if outcomes and outcomes[-1][1] is not None and is_outage(outcomes[-1][1]):
                outcomes += [outcomes[-1]] * len(piece)
            else:
                outcomes += await self._run(piece)
        return outcomes

    async def _transaction(self, group: list[_Job], timeout_s: float | None = None,
                           track: set[Deadline] | None = None) -> list[Any]:
        """`track`: where to keep the deadline while the transaction runs (`close` ends those)."""
        self.transactions += 1
        timeout_s = timeout_s or self._timeout_s
        deadline = Deadline(asyncio.get_running_loop(), timeout_s)
        token = _DEADLINE.set(deadline)
        if track is not None:
            track.add(deadline)
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(_run_all, group, deadline)
        except Exception as exc:
            if not deadline.expired:
                raise
            log.warning("ledger transaction ran out of time: its connection is discarded", why=deadline.why,
                        timeout_s=timeout_s, operations=len(group), done=deadline.done, error=repr(exc)[:200])
            raise TransactionTimeout(deadline.why, deadline.done) from exc
        finally:
            deadline.cancel()
            _DEADLINE.reset(token)
            if track is not None:
                track.discard(deadline)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        self._connections.add(dbapi_connection.driver_connection)
        deadline = _DEADLINE.get()
        if deadline is not None:
            deadline.attach(dbapi_connection.driver_connection)

    @staticmethod
    def _checked_out(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver.is_closed():  # the pool replaces it with a new one (and "connect" attaches that)
            raise sa.exc.DisconnectionError("the connection was closed while in the pool")
        deadline = _DEADLINE.get()
        if deadline is not None:
            deadline.attach(driver)

    async def close(self) -> None:
        """Finish the groups asked for; end the unhurried operations in flight (a prune would
        otherwise hold up the shutdown for up to `UNHURRIED_TIMEOUT_S`: their callers get
        `TransactionTimeout`, and a prune or migration cut short is run again next time); then
        close the pool's connections, gracefully, but within `timeout_s`: across a partition that
        close would wait for ever, so what is still open then is terminated."""
        self._closing = True
        for deadline in list(self._alone_deadlines):
            deadline.end("the ledger closed while it ran")
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
        await asyncio.gather(*self._alone, return_exceptions=True)
        stop = asyncio.get_running_loop().call_later(self._timeout_s, self._terminate_all)
        try:
            await self._engine.dispose()
        finally:
            stop.cancel()

    def _terminate_all(self) -> None:
        # Not only those `is_closed()` denies: a connection whose graceful close is waiting counts
        # as closed already. Terminating one that is closed does nothing.
        for connection in list(self._connections):
            connection.terminate()

    @property
    def usable(self) -> bool:
        return True  # a broken connection is replaced (`_checked_out`, `Deadline`); errors are per operation


def _run_all(connection: sa.Connection, group: list[_Job], deadline: Deadline) -> list[Any]:
    results = []
    for job in group:
        results.append(job.op(connection, *job.args, **job.kwargs))
        deadline.done += 1
    return results


# What an unreachable or failing database raises (not a bug, not a constraint): the driver's
# operational and interface errors, a connection refused before any driver call, a timeout.
OUTAGE = (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, TimeoutError)


# SQLSTATEs of a server not there for us right now, which asyncpg reports as plain errors:
# connection exceptions (class 08), a server shutting down, crashed, or starting up (57P01-3:
# "the database system is starting up" for a moment after every restart), and one with every
# connection slot taken (53300: likely right after a restart, when every pool reconnects at once).
OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, OUTAGE):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or (isinstance(sqlstate, str) and sqlstate.startswith(OUTAGE_SQLSTATES))


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
    """SQLAlchemy begins: a runner's transaction (`SqliteRunner._transaction`) is open on the driver
    already, or this is a connection of its own (BEGIN IMMEDIATE if it says it will write)."""
    dbapi = connection.connection.dbapi_connection
    assert isinstance(dbapi, sqlite3.Connection)
    if not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE" if connection.get_execution_options().get(WRITE) else "BEGIN")


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
