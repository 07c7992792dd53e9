"""The ledger's operations, as the workers see them: one awaitable per operation. Every method
is one short transaction, or on SQLite a share of one (see `ledger/runner.py`); `ledger/ops.py`
says what each does. None holds a lock while the caller talks to the network (the lease on a
delivery is a row, not a lock)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from smsbridge.config import LedgerSettings
from smsbridge.events import DispatchRequest, InboundMessage
from smsbridge.ledger import ops, relay_ops, schema
from smsbridge.ledger.ops import Claim, MessageRow, StatusRow
from smsbridge.ledger.relay_ops import RelaySend
from smsbridge.ledger.runner import AsyncRunner, Runner, SqliteRunner
from smsbridge.ledger.schema import messages

__all__ = ["Claim", "Ledger", "MessageRow", "RelaySend", "StatusRow", "engine_url", "open_from_settings"]


def engine_url(url: str) -> str:
    """`postgresql://…` → the asyncpg driver's URL; `sqlite:///path` stays (the standard driver)."""
    if url.startswith(("postgresql:", "postgres:")):
        return "postgresql+asyncpg:" + url.split(":", 1)[1]
    return url


class Ledger:
    def __init__(self, runner: Runner, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._db = runner
        self._now = clock

    @classmethod
    def open(cls, url: str, *, password: str | None = None, schema_name: str | None = None) -> Ledger:
        target = sa.make_url(engine_url(url))
        if password is not None:
            target = target.set(password=password)
        if target.drivername.startswith("sqlite"):
            if target.database and target.database != ":memory:":
                Path(target.database).parent.mkdir(parents=True, exist_ok=True)
            return cls(SqliteRunner(target))
        args = {"server_settings": {"search_path": schema_name}} if schema_name else {}
        return cls(AsyncRunner(create_async_engine(target, pool_pre_ping=True, connect_args=args)))

    async def upgrade(self) -> list[int]:
        return await self._db.write(schema.upgrade)

    async def version(self) -> int:
        return await self._db.read(schema.current_version)

    async def close(self) -> None:
        await self._db.close()

    @property
    def usable(self) -> bool:
        """False once the ledger cannot serve any call again (SQLite: its thread stopped)."""
        return self._db.usable

    # ----- inbound ------------------------------------------------------------------------------
    async def inbound_seen(self, mdr_id: str) -> bool:
        return await self._db.read(ops.inbound_seen, mdr_id)

    async def record_inbound(self, event: InboundMessage) -> bool:
        """Remember an inbound text (after its publish was confirmed); False if already known."""
        return await self._db.write(ops.record_inbound, event, self._now())

    async def claim_delivery(self, mdr_id: str, extension: str, lease_s: float) -> Claim:
        now = self._now()
        return await self._db.write(ops.claim_delivery, mdr_id, extension, now, now + timedelta(seconds=lease_s))

    async def delivered(self, mdr_id: str, extension: str) -> None:
        await self._db.write(ops.delivered, mdr_id, extension, self._now())

    async def release_delivery(self, mdr_id: str, extension: str) -> None:
        await self._db.write(ops.release_delivery, mdr_id, extension)

    # ----- outbound -----------------------------------------------------------------------------
    async def record_request(self, request: DispatchRequest) -> bool:
        """Remember an allowed outbound request; False when (tenant, client id) is already known."""
        return await self._db.write(ops.record_request, request, self._now())

    async def outbound(self, tenant: str, client_message_id: str) -> MessageRow | None:
        return await self._db.read(ops.outbound, tenant, client_message_id)

    async def claim_send(self, request: DispatchRequest) -> MessageRow:
        """The dispatcher's first step, in one transaction: the request's row as it was before
        (recorded now if absent: pruned, or recorded by another ledger), and, if it was "queued",
        "sending" from now on. Committed before the POST: a crash after it means "maybe sent"."""
        return await self._db.write(ops.claim_send, request, self._now())

    async def mark_sending(self, message_id: int) -> datetime:
        """Sending again after a lookup found nothing: restarts the "maybe sent" window."""
        now = self._now()
        await self._db.write(ops.mark_sending, message_id, now)
        return now

    async def mark_queued(self, message_id: int, reason: str) -> None:
        """Flowroute certainly did not take it (e.g. a 5xx): not "maybe sent" any more."""
        await self._db.write(ops.mark_queued, message_id, reason, self._now())

    async def record_accepted(self, message_id: int, mdr_id: str | None, segments: int | None) -> None:
        await self._db.write(ops.record_accepted, message_id, mdr_id, segments, self._now())

    async def record_failed(self, message_id: int, code: str, reason: str) -> None:
        await self._db.write(ops.record_failed, message_id, code, reason, self._now())

    # ----- delivery receipts --------------------------------------------------------------------
    async def claim_dlr(self, dedupe_key: str, mdr_id: str) -> bool:
        """True the first time this exact receipt is seen, False for a resend."""
        return await self._db.write(ops.claim_dlr, dedupe_key, mdr_id, self._now())

    async def unclaim_dlr(self, dedupe_key: str) -> None:
        await self._db.write(ops.unclaim_dlr, dedupe_key)

    async def record_dlr(self, mdr_id: str, state: str, reason_code: str | None, reason: str | None,
                         level: int | None, code: int | None) -> MessageRow | None:
        return await self._db.write(ops.record_dlr, mdr_id, state, reason_code, reason, level, code, self._now())

    # ----- relay API (ledger/relay_ops.py) -------------------------------------------------------
    async def claim_relay(self, send: RelaySend, *, window_s: float, stale_s: float) -> RelaySend | None:
        """Record a relay send; or the earlier send with its idempotency key (None: recorded)."""
        now = self._now()
        return await self._db.write(relay_ops.claim, send, now - timedelta(seconds=window_s),
                                    now - timedelta(seconds=stale_s))

    async def relay_queued(self, bridge_id: str) -> None:
        await self._db.write(relay_ops.queued, bridge_id)

    async def forget_relay(self, bridge_id: str) -> None:
        await self._db.write(relay_ops.forget, bridge_id)

    async def relay_send(self, tenant: str, bridge_id: str) -> RelaySend | None:
        return await self._db.read(relay_ops.find, tenant, bridge_id)

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
        return await self._db.read(ops.message_rows, query)

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
        rows = await self._db.read(ops.message_rows, sa.select(messages).where(condition).limit(1))
        return rows[0] if rows else None

    async def history(self, message_id: int) -> list[StatusRow]:
        return await self._db.read(ops.history, message_id)

    async def prune(self, older_than: timedelta) -> int:
        """Forget messages (and their history), claims and receipts not touched for `older_than`."""
        cutoff = self._now() - older_than
        await self._db.write(relay_ops.prune, cutoff)
        return await self._db.write(ops.prune, cutoff)


def open_from_settings(settings: LedgerSettings) -> Ledger:
    password = settings.password.reveal() if settings.password else None
    return Ledger.open(settings.url, password=password, schema_name=settings.schema)
