"""The ledger's operations. Every method is one short transaction; none holds a lock while the
caller talks to the network (the lease on a delivery is a row, not a lock)."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from smsbridge.config import LedgerSettings
from smsbridge.events import DispatchRequest, InboundMessage
from smsbridge.ledger import schema
from smsbridge.ledger.schema import deliveries, dlrs_seen, messages, status_history

# Later states never give way to earlier ones (DLRs can arrive out of order).
STATE_RANK = {"queued": 0, "received": 0, "accepted": 1, "sent": 2, "buffered": 3, "delivered": 4, "failed": 4}


class Claim(enum.Enum):
    NEW = "new"  # yours: go ahead
    DONE = "done"  # already delivered: skip
    BUSY = "busy"  # another worker holds a live lease: try later


class MessageRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    direction: str
    tenant: str
    config_id: str
    client_message_id: str | None
    mdr_id: str | None
    from_number: str
    to_number: str
    from_extension: str | None
    body: str
    is_mms: bool
    segments: int | None
    state: str
    reason_code: str | None
    reason: str | None
    dispatch_state: str | None
    send_started_at: datetime | None
    created_at: datetime
    updated_at: datetime


class StatusRow(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    reason_code: str | None
    reason: str | None
    dlr_level: int | None
    dlr_code: int | None
    at: datetime


def engine_url(url: str) -> str:
    """`sqlite:///path` and `postgresql://…` → the async drivers' URLs."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url.removeprefix("sqlite:")
    if url.startswith(("postgresql:", "postgres:")):
        return "postgresql+asyncpg:" + url.split(":", 1)[1]
    return url


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were written as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _row(mapping: Any) -> MessageRow:
    data = dict(mapping)
    for key in ("send_started_at", "created_at", "updated_at"):
        data[key] = _utc(data[key])
    return MessageRow(**data)


class Ledger:
    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self._now = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    def open(cls, url: str, *, password: str | None = None, schema_name: str | None = None) -> Ledger:
        target = sa.make_url(engine_url(url))
        if password is not None:
            target = target.set(password=password)
        if target.drivername.startswith("sqlite"):
            if target.database and target.database != ":memory:":
                Path(target.database).parent.mkdir(parents=True, exist_ok=True)
            # One connection per process: SQLite has one writer at a time, and writers that queue in
            # SQLite's busy handler sleep for milliseconds, while queueing here costs microseconds.
            engine = create_async_engine(target, pool_size=1, max_overflow=0)
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            args = {"server_settings": {"search_path": schema_name}} if schema_name else {}
            engine = create_async_engine(target, pool_pre_ping=True, connect_args=args)
        return cls(engine)

    async def upgrade(self) -> list[int]:
        async with self.engine.begin() as connection:
            return await schema.upgrade(connection)

    async def version(self) -> int:
        async with self.engine.connect() as connection:
            return await schema.current_version(connection)

    async def close(self) -> None:
        await self.engine.dispose()

    # ----- inbound ------------------------------------------------------------------------------
    async def inbound_seen(self, mdr_id: str) -> bool:
        async with self.engine.connect() as connection:
            found = await connection.execute(sa.select(messages.c.id).where(messages.c.mdr_id == mdr_id))
            return found.first() is not None

    async def record_inbound(self, event: InboundMessage) -> bool:
        """Remember an inbound text (after its publish was confirmed); False if already known."""
        now = self._now()
        async with self.engine.begin() as connection:
            inserted = await connection.execute(self._insert(messages).values(
                direction="inbound", tenant=event.tenant, config_id=event.config_id, mdr_id=event.mdr_id,
                from_number=event.from_, to_number=event.to, body=event.body, is_mms=event.is_mms,
                state="received", created_at=now, updated_at=now,
            ).on_conflict_do_nothing().returning(messages.c.id))
            message_id = inserted.scalar()
            if message_id is None:
                return False
            await connection.execute(sa.insert(status_history).values(message_id=message_id, state="received",
                                                                      at=now))
            return True

    async def claim_delivery(self, mdr_id: str, extension: str, lease_s: float) -> Claim:
        now = self._now()
        lease = now + timedelta(seconds=lease_s)
        key = (deliveries.c.mdr_id == mdr_id) & (deliveries.c.extension == extension)
        async with self.engine.begin() as connection:
            inserted = await connection.execute(self._insert(deliveries).values(
                mdr_id=mdr_id, extension=extension, state="delivering", lease_until=lease, updated_at=now,
            ).on_conflict_do_nothing())
            if inserted.rowcount == 1:
                return Claim.NEW
            row = (await connection.execute(sa.select(deliveries.c.state, deliveries.c.lease_until)
                                            .where(key))).one()
            if row.state == "delivered":
                return Claim.DONE
            if _utc(row.lease_until) > now:  # type: ignore[operator]
                return Claim.BUSY
            taken = await connection.execute(sa.update(deliveries).where(
                key & (deliveries.c.lease_until == row.lease_until)).values(lease_until=lease, updated_at=now))
            return Claim.NEW if taken.rowcount == 1 else Claim.BUSY

    async def delivered(self, mdr_id: str, extension: str) -> None:
        now = self._now()
        async with self.engine.begin() as connection:
            await connection.execute(sa.update(deliveries).where(
                (deliveries.c.mdr_id == mdr_id) & (deliveries.c.extension == extension)
            ).values(state="delivered", updated_at=now))
            message_id = (await connection.execute(sa.select(messages.c.id)
                                                   .where(messages.c.mdr_id == mdr_id))).scalar()
            if message_id is not None:
                await self._advance(connection, message_id, "delivered", reason=f"delivered to extension {extension}")

    async def release_delivery(self, mdr_id: str, extension: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(deliveries).where(
                (deliveries.c.mdr_id == mdr_id) & (deliveries.c.extension == extension)
                & (deliveries.c.state == "delivering")))

    # ----- outbound -----------------------------------------------------------------------------
    async def record_request(self, request: DispatchRequest) -> bool:
        """Remember an allowed outbound request; False when (tenant, client id) is already known."""
        now = self._now()
        async with self.engine.begin() as connection:
            inserted = await connection.execute(self._insert(messages).values(
                direction="outbound", tenant=request.tenant, config_id=request.config_id,
                client_message_id=request.client_message_id, from_number=request.from_, to_number=request.to,
                from_extension=request.from_extension, body=request.body, is_mms=request.is_mms,
                segments=request.segments, state="queued", dispatch_state="queued", created_at=now, updated_at=now,
            ).on_conflict_do_nothing().returning(messages.c.id))
            message_id = inserted.scalar()
            if message_id is None:
                return False
            await connection.execute(sa.insert(status_history).values(message_id=message_id, state="queued", at=now))
            return True

    async def outbound(self, tenant: str, client_message_id: str) -> MessageRow | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(sa.select(messages).where(
                (messages.c.tenant == tenant) & (messages.c.client_message_id == client_message_id)))).first()
            return _row(row._mapping) if row else None

    async def mark_sending(self, message_id: int) -> datetime:
        """Written (and committed) before the POST: a crash after it means "maybe sent"."""
        now = self._now()
        async with self.engine.begin() as connection:
            await connection.execute(sa.update(messages).where(messages.c.id == message_id).values(
                dispatch_state="sending", send_started_at=now, updated_at=now))
        return now

    async def mark_queued(self, message_id: int, reason: str) -> None:
        """Flowroute certainly did not take it (e.g. a 5xx): not "maybe sent" any more."""
        async with self.engine.begin() as connection:
            await connection.execute(sa.update(messages).where(messages.c.id == message_id).values(
                dispatch_state="queued", reason=reason, updated_at=self._now()))

    async def record_accepted(self, message_id: int, mdr_id: str | None, segments: int | None) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.update(messages).where(messages.c.id == message_id).values(
                dispatch_state="done", mdr_id=mdr_id, segments=segments, reason=None, updated_at=self._now()))
            await self._advance(connection, message_id, "accepted")

    async def record_failed(self, message_id: int, code: str, reason: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.update(messages).where(messages.c.id == message_id).values(
                dispatch_state="done", updated_at=self._now()))
            await self._advance(connection, message_id, "failed", code, reason)

    # ----- delivery receipts --------------------------------------------------------------------
    async def claim_dlr(self, dedupe_key: str, mdr_id: str) -> bool:
        """True the first time this exact receipt is seen, False for a resend."""
        async with self.engine.begin() as connection:
            inserted = await connection.execute(self._insert(dlrs_seen).values(
                dedupe_key=dedupe_key[:255], mdr_id=mdr_id, seen_at=self._now()).on_conflict_do_nothing())
            return inserted.rowcount == 1

    async def unclaim_dlr(self, dedupe_key: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.delete(dlrs_seen).where(dlrs_seen.c.dedupe_key == dedupe_key[:255]))

    async def record_dlr(self, mdr_id: str, state: str, reason_code: str | None, reason: str | None,
                         level: int | None, code: int | None) -> MessageRow | None:
        async with self.engine.begin() as connection:
            row = (await connection.execute(sa.select(messages).where(messages.c.mdr_id == mdr_id))).first()
            if row is None:
                return None
            await self._advance(connection, row.id, state, reason_code, reason, level, code)
            return _row(row._mapping)

    async def _advance(self, connection: Any, message_id: int, state: str, reason_code: str | None = None,
                       reason: str | None = None, level: int | None = None, code: int | None = None) -> None:
        """Add to the history; move the current state only forward."""
        now = self._now()
        await connection.execute(sa.insert(status_history).values(
            message_id=message_id, state=state, reason_code=reason_code, reason=reason, dlr_level=level,
            dlr_code=code, at=now))
        current = (await connection.execute(sa.select(messages.c.state)
                                            .where(messages.c.id == message_id))).scalar()
        if current in ("delivered", "failed") or STATE_RANK.get(state, 0) < STATE_RANK.get(current or "", 0):
            return
        await connection.execute(sa.update(messages).where(messages.c.id == message_id).values(
            state=state, reason_code=reason_code, reason=reason if reason is not None else messages.c.reason,
            updated_at=now))

    # ----- history --------------------------------------------------------------------------------
    async def search(self, *, tenant: str | None = None, number: str | None = None, state: str | None = None,
                     since: datetime | None = None, until: datetime | None = None, limit: int = 50,
                     before_id: int | None = None) -> list[MessageRow]:
        """Newest first; page with `before_id` = the last row's id."""
        query = sa.select(messages).order_by(messages.c.id.desc()).limit(max(1, min(limit, 500)))
        conditions = [
            messages.c.tenant == tenant if tenant else None,
            (messages.c.from_number == number) | (messages.c.to_number == number) if number else None,
            messages.c.state == state if state else None,
            messages.c.created_at >= since if since else None,
            messages.c.created_at < until if until else None,
            messages.c.id < before_id if before_id else None,
        ]
        for condition in conditions:
            if condition is not None:
                query = query.where(condition)
        async with self.engine.connect() as connection:
            return [_row(r._mapping) for r in await connection.execute(query)]

    async def find(self, ref: str, tenant: str | None = None) -> MessageRow | None:
        """A message by ledger id, Flowroute id (`mdr…`) or client message id."""
        if ref.isdigit():
            condition = messages.c.id == int(ref)
        elif ref.startswith("mdr"):
            condition = messages.c.mdr_id == ref
        else:
            condition = messages.c.client_message_id == ref
        if tenant:
            condition = condition & (messages.c.tenant == tenant)
        async with self.engine.connect() as connection:
            row = (await connection.execute(sa.select(messages).where(condition).limit(1))).first()
            return _row(row._mapping) if row else None

    async def history(self, message_id: int) -> list[StatusRow]:
        query = (sa.select(status_history.c.state, status_history.c.reason_code, status_history.c.reason,
                           status_history.c.dlr_level, status_history.c.dlr_code, status_history.c.at)
                 .where(status_history.c.message_id == message_id).order_by(status_history.c.id))
        async with self.engine.connect() as connection:
            rows = await connection.execute(query)
            return [StatusRow(**{**dict(r._mapping), "at": _utc(r.at)}) for r in rows]

    async def prune(self, older_than: timedelta) -> int:
        """Forget messages (and their history), claims and receipts not touched for `older_than`."""
        cutoff = self._now() - older_than
        async with self.engine.begin() as connection:
            old = sa.select(messages.c.id).where(messages.c.updated_at < cutoff)
            await connection.execute(sa.delete(status_history).where(status_history.c.message_id.in_(old)))
            removed = await connection.execute(sa.delete(messages).where(messages.c.updated_at < cutoff))
            await connection.execute(sa.delete(deliveries).where(deliveries.c.updated_at < cutoff))
            await connection.execute(sa.delete(dlrs_seen).where(dlrs_seen.c.seen_at < cutoff))
            return int(removed.rowcount or 0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")  # first: everything after may wait for a lock
    _use_wal(cursor)
    for pragma in ("foreign_keys=ON", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _use_wal(cursor: Any, attempts: int = 100) -> None:
    """WAL is a property of the file: set once, by whichever process gets there first. Switching
    needs an exclusive lock that SQLite does not wait for, so processes starting together on a new
    file retry here (seen in the benchmarks: two workers started at once, one died "locked")."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, wrapped by SQLAlchemy's adapter
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)  # runs on the driver's own thread, not the event loop


def open_from_settings(settings: LedgerSettings) -> Ledger:
    password = settings.password.reveal() if settings.password else None
    return Ledger.open(settings.url, password=password, schema_name=settings.schema)
