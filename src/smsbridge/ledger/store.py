"""The ledger's operations, as the workers see them: one awaitable per operation. Every method
is one short transaction, or on SQLite a share of one (see `ledger/runner.py`); `ledger/ops.py`
says what each does. None holds a lock while the caller talks to the network (the lease on a
delivery is a row, not a lock)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import create_async_engine

from smsbridge.config import LedgerSettings
from smsbridge.errors import LedgerUnavailable
from smsbridge.events import DispatchRequest, InboundDelivery, InboundMessage, encoder
from smsbridge.ledger import claims, dispatch_ops, media_ops, ops, order, relay_ops, schema
from smsbridge.ledger.claims import Claim, DeliveryKey
from smsbridge.ledger.media_ops import MediaRecord, MediaRow
from smsbridge.ledger.ops import MessageRow, Scope, StatusRow
from smsbridge.ledger.relay_ops import RelaySend, Retaken
from smsbridge.ledger.runner import (
    DEFAULT_TIMEOUT_S,
    OUTAGE,
    AsyncRunner,
    Op,
    P,
    Runner,
    SqliteRunner,
    T,
    is_outage,
)
from smsbridge.ledger.schema import messages

log = structlog.get_logger("smsbridge.ledger")

__all__ = ["OUTAGE", "Claim", "DeliveryKey", "Ledger", "MessageRow", "RelaySend", "Retaken", "Scope", "StatusRow",
           "engine_url", "open_from_settings"]


def engine_url(url: str) -> str:
    """`postgresql://…` → the asyncpg driver's URL; `sqlite:///path` stays (the standard driver)."""
    if url.startswith(("postgresql:", "postgres:")):
        return "postgresql+asyncpg:" + url.split(":", 1)[1]
    return url


class OutageGuard:
    """A runner whose outage errors are `LedgerUnavailable`, logged once when the outage starts
    and once when it ends, instead of a traceback per message."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self.down = False

    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._guard(self._runner.write(op, *args, **kwargs))

    def start_write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        return self._guard(self._runner.start_write(op, *args, **kwargs))

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._guard(self._runner.read(op, *args, **kwargs))

    async def _guard(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except Exception as exc:
            if not is_outage(exc):
                raise
            if not self.down:
                log.error("ledger unavailable: messages are retried until it is back", error=repr(exc)[:300])
            self.down = True
            raise LedgerUnavailable(f"ledger unavailable: {exc.__class__.__name__}") from exc
        if self.down:
            log.warning("ledger available again")
            self.down = False
        return result

    async def close(self) -> None:
        await self._runner.close()

    @property
    def usable(self) -> bool:
        return self._runner.usable


class Ledger:
    def __init__(self, runner: Runner, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._db = OutageGuard(runner)
        self._now = clock

    @classmethod
    def open(cls, url: str, *, password: str | None = None, schema_name: str | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S, connect_timeout_s: float = DEFAULT_TIMEOUT_S) -> Ledger:
        """`timeout_s`, `connect_timeout_s`: PostgreSQL only (`[ledger]` in docs/configuration.md)."""
        target = sa.make_url(engine_url(url))
        if password is not None:
            target = target.set(password=password)
        if target.drivername.startswith("sqlite"):
            if target.database and target.database != ":memory:":
                Path(target.database).parent.mkdir(parents=True, exist_ok=True)
            return cls(SqliteRunner(target))
        # The server ends a session left idle inside a transaction for twice the deadline: ours
        # never are (`AsyncRunner` ends its side first), so that is one abandoned across a
        # partition, whose locks (a conversation's, rows) would otherwise stall other processes
        # until the server's TCP keepalive noticed, hours later.
        server_settings = {"idle_in_transaction_session_timeout": str(math.ceil(2000 * timeout_s))}
        if schema_name:
            server_settings["search_path"] = schema_name
        # timeout: opening a connection. No command_timeout: asyncpg would apply it to every
        # statement, an unhurried prune's or migration's too (`UNHURRIED_TIMEOUT_S`). Each
        # transaction's `Deadline` bounds its statements (a new connection's dialect set-up
        # included), and `AsyncRunner.close` bounds the pool's graceful close.
        args = {"server_settings": server_settings, "timeout": connect_timeout_s}
        # No pool_pre_ping: its ping would be one more query outside any deadline (AsyncRunner).
        # hide_parameters: a failed statement's error text would quote its parameters (numbers, bodies).
        engine = create_async_engine(target, connect_args=args, hide_parameters=True)
        return cls(AsyncRunner(engine, timeout_s=timeout_s))

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
    async def inbound_seen(self, scope: Scope, mdr_id: str) -> bool:
        """Whether this configuration already took the inbound text `mdr_id`."""
        return await self._db.read(ops.inbound_seen, scope, mdr_id)

    async def record_inbound(self, event: InboundMessage) -> bool:
        """Remember an inbound text (after its publish was confirmed); False if already known."""
        return await self._db.write(ops.record_inbound, event, self._now())

    async def claim_delivery(self, key: DeliveryKey, lease_s: float) -> Claim:
        now = self._now()
        return await self._db.write(claims.claim_delivery, key, now, now + timedelta(seconds=lease_s))

    async def delivered(self, key: DeliveryKey, state: str = "delivered") -> None:
        """`state` "accepted": a relay took the text (SIP 202), not proof that it reached a phone."""
        await self._db.write(claims.delivered, key, self._now(), state)

    async def deliveries(self, config_id: str, mdr_id: str) -> list[claims.DeliveryRow]:
        """Where the inbound text `mdr_id` of this configuration stands for each extension."""
        return await self._db.read(claims.deliveries_of, config_id, mdr_id)

    async def last_did(self, tenant: str, number: str, extension: str) -> str | None:
        return await self._db.read(claims.last_did, tenant, number, extension)

    async def release_delivery(self, key: DeliveryKey, held: frozenset[datetime] | None = None) -> None:
        """With `held`: only while the claim's lease is one of those (`claims.release_delivery`)."""
        await self._db.write(claims.release_delivery, key, held)

    # ----- order of deliveries (see ledger/order.py): each returns the texts now due -------------
    async def enqueue_deliveries(self, deliveries: Sequence[InboundDelivery]) -> list[bytes]:
        return await self._db.write(order.enqueue, _entries(deliveries), self._now())

    async def enqueue_unseen(self, scope: Scope, mdr_id: str,
                             deliveries: Sequence[InboundDelivery]) -> list[bytes] | None:
        """`enqueue_deliveries` unless `inbound_seen`: None then, and nothing recorded."""
        return await self._db.write(order.enqueue_unseen, scope, mdr_id, _entries(deliveries), self._now())

    async def claim_turn(self, key: DeliveryKey, lease_s: float) -> tuple[order.Turn, list[bytes]]:
        return await self.claim_turn_until(key, self.lease_until(lease_s))

    def lease_until(self, lease_s: float) -> datetime:
        """When a lease of `lease_s` taken now ends, on the ledger's clock."""
        return self._now() + timedelta(seconds=lease_s)

    async def claim_turn_until(self, key: DeliveryKey, until: datetime) -> tuple[order.Turn, list[bytes]]:
        """`claim_turn` with the lease's end given (`lease_until`): the caller renews it by that value."""
        return await self._db.write(order.claim, key, self._now(), until)

    async def renew_delivery(self, key: DeliveryKey, held: frozenset[datetime], until: datetime) -> bool:
        """Extend a claim whose lease is one of `held` to `until`; False when it is not held any more."""
        return await self._db.write(order.renew, key, held, self._now(), until)

    async def delivered_in_turn(self, key: DeliveryKey, state: str = "delivered") -> list[bytes]:
        """`state` "accepted": a relay took the text (SIP 202), not proof that it reached a phone."""
        return await self._db.write(order.delivered, key, self._now(), state)

    async def settle_turn(self, key: DeliveryKey) -> list[bytes]:
        """The text was dead-lettered: the conversation's next text may go."""
        return await self._db.write(order.settle, key, self._now())

    async def stale_turns(self, older_than: timedelta) -> list[tuple[DeliveryKey, bytes]]:
        return await self._db.read(order.stale_heads, self._now() - older_than)

    async def release_turn(self, key: DeliveryKey, older_than: timedelta) -> list[bytes]:
        now = self._now()
        return await self._db.write(order.release, key, now - older_than, now)

    # ----- outbound -----------------------------------------------------------------------------
    async def record_request(self, request: DispatchRequest, relay: RelaySend | None = None) -> bool:
        """Remember an allowed outbound request; False when (tenant, client id) is already known.
        `relay`: the relay API's row of the same send, recorded in the same transaction if new."""
        if relay is None:
            return await self._db.write(ops.record_request, request, self._now())
        return await self._db.write(relay_ops.record_with_request, relay, request, self._now())

    async def outbound(self, tenant: str, client_message_id: str) -> MessageRow | None:
        return await self._db.read(ops.outbound, tenant, client_message_id)

    async def held_mdrs(self, mdr_ids: list[str]) -> set[str]:
        """Those of `mdr_ids` that some outbound message in the ledger already has (an inbound
        text's id is what a webhook said, `ops.OUTBOUND_BY_MDR`)."""
        return await self._db.read(ops.held_mdrs, mdr_ids)

    async def alike_in_doubt(self, row: MessageRow, within: timedelta) -> list[datetime]:
        """When other requests with the same text to the same number, still "sending" and touched
        within `within`, started."""
        return await self._db.read(ops.alike_in_doubt, row, self._now() - within)

    async def claim_send(self, request: DispatchRequest, *, gap: timedelta,
                         after_lookup: bool = False) -> tuple[MessageRow, bool]:
        """The dispatcher's one transaction before a POST (`dispatch_ops.claim_send`): the row,
        and whether it is now marked "sending" by us. `gap`: how long after its last attempt ended
        a message may be tried again."""
        now = self._now()
        return await self._db.write(dispatch_ops.claim_send, request, now, now - gap, after_lookup)

    async def recent_sends(self, config_ids: list[str], ended_within: timedelta,
                           sending_within: timedelta) -> list[dispatch_ops.RecentSend]:
        """For a takeover: these configurations' attempts that may still count (`dispatch_ops`)."""
        now = self._now()
        return await self._db.read(dispatch_ops.recent_sends, config_ids, now - ended_within, now - sending_within)

    async def touch_sending(self, message_id: int) -> None:
        """A lookup of a message still "sending" is about to start (`dispatch_ops.touch`)."""
        await self._db.write(dispatch_ops.touch, message_id, self._now())

    async def mark_queued(self, message_id: int, reason: str) -> None:
        """Flowroute certainly did not take it (e.g. a 5xx): not "maybe sent" any more."""
        await self._db.write(ops.mark_queued, message_id, reason, self._now())

    async def record_accepted(self, message_id: int, mdr_id: str | None, segments: int | None) -> bool:
        """False (nothing written) when another outbound message already has `mdr_id`."""
        return await self._db.write(dispatch_ops.accept, message_id, mdr_id, segments, self._now())

    async def record_failed(self, message_id: int, code: str, reason: str) -> None:
        await self._db.write(ops.record_failed, message_id, code, reason, self._now())

    # ----- delivery receipts --------------------------------------------------------------------
    async def claim_dlr(self, dedupe_key: str, mdr_id: str, claimed_by: str | None = None) -> bool:
        """True the first time this exact receipt is seen (or again for the event `claimed_by`
        that claimed it), False for a resend."""
        return await self._db.write(ops.claim_dlr, dedupe_key, mdr_id, self._now(), claimed_by)

    async def claim_and_record_dlr(self, dedupe_key: str, scope: Scope, mdr_id: str, state: str,
                                   reason_code: str | None, reason: str | None, level: int | None,
                                   code: int | None, *, claimed_by: str | None = None) -> bool:
        """`claim_dlr` and `record_dlr` in one transaction: False, and nothing recorded, for a resend.
        `claimed_by`: the broker event's id, so that event coming again (its first COMMIT may have
        succeeded unseen) is its own claim, not a resend (`ops.claim_and_record_dlr`)."""
        return await self._db.write(ops.claim_and_record_dlr, dedupe_key, scope, mdr_id, state, reason_code, reason,
                                    level, code, self._now(), claimed_by)

    async def unclaim_dlr(self, dedupe_key: str) -> None:
        await self._db.write(ops.unclaim_dlr, dedupe_key)

    async def receipt_target(self, scope: Scope, mdr_id: str) -> MessageRow | None:
        """The outbound message a receipt is about, within the receipt's configuration only."""
        return await self._db.read(ops.receipt_target, scope, mdr_id)

    async def record_dlr(self, scope: Scope, mdr_id: str, state: str, reason_code: str | None, reason: str | None,
                         level: int | None, code: int | None) -> MessageRow | None:
        return await self._db.write(ops.record_dlr, scope, mdr_id, state, reason_code, reason, level, code,
                                    self._now())

    # ----- relay API (ledger/relay_ops.py) -------------------------------------------------------
    async def claim_relay(self, send: RelaySend, *, window_s: float,
                          stale_s: float) -> RelaySend | Retaken | None:
        """Record a relay send (None); or the earlier send with its idempotency key, to answer
        from, or `Retaken` to publish again under its id (`relay_ops.claim`)."""
        return await self.start_claim_relay(send, window_s=window_s, stale_s=stale_s)

    def start_claim_relay(self, send: RelaySend, *, window_s: float,
                          stale_s: float) -> Awaitable[RelaySend | Retaken | None]:
        """`claim_relay` asked for now, awaited later: the row is written while the caller awaits
        something else (the relay API: the broker's confirm), without a task per send."""
        now = self._now()
        return self._db.start_write(relay_ops.claim, send, now - timedelta(seconds=window_s),
                                    now - timedelta(seconds=stale_s))

    async def record_relay(self, send: RelaySend) -> None:
        """The relay API's row of a send without a key, unless it is there already (`relay_ops.record`)."""
        await self._db.write(relay_ops.record, send)

    async def relay_queued(self, bridge_id: str) -> None:
        await self._db.write(relay_ops.queued, bridge_id)

    async def relay_unconfirmed(self, bridge_id: str) -> None:
        await self._db.write(relay_ops.unconfirmed, bridge_id)

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
        """A message by ledger id, Flowroute id (`mdr…`) or client message id. A Flowroute id is
        unique per configuration and direction only (migration 6): a send's row comes before an
        inbound text's holding the same id, then the first recorded."""
        if ref.isdigit():
            condition = messages.c.id == int(ref)
        elif ref.startswith("mdr"):
            condition = messages.c.mdr_id == ref
        else:
            condition = messages.c.client_message_id == ref
        if tenant:
            condition = condition & (messages.c.tenant == tenant)
        sends_first = sa.case((messages.c.direction == "outbound", 0), else_=1)
        query = sa.select(messages).where(condition).order_by(sends_first, messages.c.id).limit(1)
        rows = await self._db.read(ops.message_rows, query)
        return rows[0] if rows else None

    async def history(self, message_id: int) -> list[StatusRow]:
        return await self._db.read(ops.history, message_id)

    async def prune(self, older_than: timedelta) -> int:
        """Forget messages (and their history), claims and receipts not touched for `older_than`."""
        cutoff = self._now() - older_than
        removed = await self._db.write(ops.prune, cutoff)
        await self._db.write(order.prune, cutoff)
        await self._db.write(relay_ops.prune, cutoff)
        return removed

    # ----- media (issue 20) -----------------------------------------------------------------------
    async def record_media(self, record: MediaRecord) -> int:
        """Remember one attachment (stored or missing); its media id, stable across redeliveries."""
        return await self._db.write(media_ops.record_media, record, self._now())

    async def media(self, media_id: int) -> MediaRow | None:
        return await self._db.read(media_ops.media_by_id, media_id)

    async def media_of(self, message_ref: str) -> list[MediaRow]:
        return await self._db.read(media_ops.media_of, message_ref)

    async def media_of_message(self, tenant: str, ident: str) -> list[MediaRow]:
        return await self._db.read(media_ops.media_of_message, tenant, ident)

    async def prune_media(self, older_than: timedelta) -> list[str]:
        """Forget attachments past retention; the blob keys nothing refers to any more."""
        return await self._db.write(media_ops.prune_media, self._now() - older_than)


def open_from_settings(settings: LedgerSettings) -> Ledger:
    password = settings.password.reveal() if settings.password else None
    return Ledger.open(settings.url, password=password, schema_name=settings.schema, timeout_s=settings.timeout_s,
                       connect_timeout_s=settings.connect_timeout_s)


def _entries(deliveries: Sequence[InboundDelivery]) -> list[order.Entry]:
    """Each delivery as the order table records it (`ledger/order.py`)."""
    return [order.Entry(DeliveryKey.of(d), d.conversation, d.received_at, encoder.encode(d)) for d in deliveries]
