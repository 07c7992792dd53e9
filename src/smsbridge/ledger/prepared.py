"""The ledger's hot statements, run on the driver's cursor instead of through SQLAlchemy's
execution machinery.

Each statement is still written with SQLAlchemy Core (ops.py, order.py) and compiled by it, once
per dialect; only the per-execution work is skipped: building an execution context, firing
events, wrapping the cursor in a result. Measured on the benchmark VM, the inbound path's ledger
thread spent 75% of its time in that machinery and 5% in SQLite itself; one SELECT by index costs
25-32 µs through `Connection.execute` and 11 µs this way.

On PostgreSQL the driver is SQLAlchemy's asyncpg adapter (under `run_sync`, as before), and the
round trip stays; the inbound path's ledger calls went from 3.3-4.8 to 2.5-2.8 ms of CPU per
text. A connection that dies under a statement here is not invalidated at once: the pool's
pre-ping finds it at its next check-out.

Values go through the same bind and result processors SQLAlchemy would use (a `DateTime` is
stored and read back exactly as before), and a driver error is raised as SQLAlchemy's
`DBAPIError` subclass, parameters hidden, so callers see what they saw before. A statement
whose column defaults are computed in Python (none of the hot ones) goes through
`Connection.execute`.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

Processor = Callable[[Any], Any] | None


class _Plan:
    """One statement compiled for one dialect: its SQL, its parameters in order, the processors."""

    def __init__(self, statement: sa.Executable, dialect: Dialect, keys: frozenset[str]) -> None:
        # With the keys given, as SQLAlchemy compiles for a call: an INSERT names only those columns.
        compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))  # type: ignore[attr-defined]
        # A column default computed in Python needs SQLAlchemy's execution context: not here.
        self.usable = not (compiled.insert_prefetch or compiled.update_prefetch)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults: dict[str, Any] = dict(compiled.params)
        self.binds: tuple[Processor, ...] = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self.names)
        columns = list(getattr(statement, "exported_columns", ()))
        self.row: Any = _row_class([column.key for column in columns]) if columns else None
        self.results: tuple[Processor, ...] = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
        self.any_result = any(p is not None for p in self.results)

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, process in zip(self.names, self.binds, strict=True):
            value = params[name] if name in params else self.defaults[name]
            out.append(process(value) if process is not None and value is not None else value)
        return out

    def shape(self, raw: tuple[Any, ...]) -> Any:
        if self.any_result:
            raw = tuple(p(v) if p is not None else v for p, v in zip(self.results, raw, strict=True))
        return self.row._make(raw) if self.row is not None else raw


def _row_class(names: list[str]) -> Any:
    """A tuple with attributes by column name and `_mapping`, as much of SQLAlchemy's `Row` as is used."""
    base = namedtuple("Row", names, rename=True)  # type: ignore[misc]  # noqa: PYI024
    return type("Row", (base,), {"__slots__": (), "_mapping": property(lambda row: row._asdict())})


class Result:
    """What the ledger's operations read from a statement: as much of `CursorResult` as they use."""

    def __init__(self, plan: _Plan, cursor: Any) -> None:
        self._plan = plan
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def first(self) -> Any:
        raw = self._cursor.fetchone()
        self._cursor.close()
        return None if raw is None else self._plan.shape(raw)

    def one(self) -> Any:
        row = self.first()
        if row is None:
            raise sa.exc.NoResultFound("No row was found when one was required")
        return row

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]


FAST = {"sqlite", "postgresql"}
_PLANS: dict[tuple[int, str, frozenset[str]], tuple[sa.Executable, _Plan]] = {}


def execute(c: sa.Connection, statement: sa.Executable, params: Mapping[str, Any]) -> Any:
    """`c.execute(statement, params)`; on the dialects in `FAST`, straight on the driver's cursor. `statement`
    must live as long as the process (a module-level constant): its plan is kept by identity."""
    dialect = c.dialect
    if dialect.name not in FAST:
        return c.execute(statement, params)
    keys = frozenset(params)
    key = (id(statement), dialect.name, keys)
    held = _PLANS.get(key)
    if held is None:
        held = _PLANS[key] = (statement, _Plan(statement, dialect, keys))
    plan = held[1]
    if not plan.usable:
        return c.execute(statement, params)
    dbapi = c.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(plan.sql, plan.values(params))
    except dialect.loaded_dbapi.Error as exc:
        cursor.close()
        raise sa.exc.DBAPIError.instance(plan.sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                                         dialect=dialect) from exc
    return Result(plan, cursor)
