"""The ledger's transactions, each a plain function over a connection.

A runner (`ledger/runner.py`) calls one of these inside one transaction, so a transaction costs
one trip to the database thread (SQLite) or one greenlet switch per statement (PostgreSQL), not
one per statement and per begin and commit. Statements are built once, here, and executed with
parameters: SQLAlchemy then finds their compiled form without building a new expression per call.
The inbound path's and the dispatcher's statements run through `prepared.execute` (`run`), which
skips SQLAlchemy's per-execution machinery; the rest through `Connection.execute`.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from smsbridge.events import DispatchRequest, InboundMessage
from smsbridge.ledger.prepared import execute as run
from smsbridge.ledger.runner import unhurried
from smsbridge.ledger.schema import deliveries, dlrs_seen, messages, status_history

# Later states never give way to earlier ones (DLRs can arrive out of order).
STATE_RANK = {"queued": 0, "received": 0, "accepted": 1, "sent": 2, "buffered": 3, "delivered": 4, "failed": 4}
FINAL = ("delivered", "failed")


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


def utc(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were written as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def message_row(mapping: Any) -> MessageRow:
    data = dict(mapping)
    for key in ("send_started_at", "created_at", "updated_at"):
        data[key] = utc(data[key])
    return MessageRow(**data)


def insert_or_skip(table: sa.Table, *returning: sa.Column[Any]) -> dict[str, Any]:
    """INSERT … ON CONFLICT DO NOTHING, one per dialect (the clause is dialect-specific)."""
    built = {}
    for dialect, insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert)):
        statement = insert(table).on_conflict_do_nothing()
        built[dialect] = statement.returning(*returning) if returning else statement
    return built


_p = sa.bindparam
_NEW_MESSAGE = insert_or_skip(messages, messages.c.id)
_NEW_DLR = insert_or_skip(dlrs_seen)
_ADD_HISTORY = sa.insert(status_history)
# The outbound message holding a Flowroute id, in any configuration: outbound ids come from
# Flowroute's answers to the bridge, unique across accounts; an inbound id is what a webhook
# said, and another configuration's webhook may say anything (migration 6).
OUTBOUND_BY_MDR = sa.select(messages.c.id).where((messages.c.mdr_id == _p("mdr_id"))
                                                 & (messages.c.direction == "outbound"))
# What a webhook may look up: only its own configuration's (and so tenant's) messages, by
# Flowroute id in one direction. Another tenant's id must find nothing, not its row.
_WEBHOOK_SCOPE = ((messages.c.mdr_id == _p("mdr_id")) & (messages.c.tenant == _p("tenant"))
                  & (messages.c.config_id == _p("config_id")) & (messages.c.direction == _p("direction")))
_SCOPED_ID = sa.select(messages.c.id).where(_WEBHOOK_SCOPE)
_SCOPED_ROW = sa.select(messages).where(_WEBHOOK_SCOPE)
_ROW_BY_CLIENT_ID = sa.select(messages).where(
    (messages.c.tenant == _p("tenant")) & (messages.c.client_message_id == _p("client_message_id")))
_UPDATE_MESSAGE = sa.update(messages).where(messages.c.id == _p("message_id"))
_SENDING = _UPDATE_MESSAGE.values(dispatch_state="sending", send_started_at=_p("now"), updated_at=_p("now"))
_REQUEUED = _UPDATE_MESSAGE.values(dispatch_state="queued", reason=_p("new_reason"), updated_at=_p("now"))
_DONE = _UPDATE_MESSAGE.values(dispatch_state="done", updated_at=_p("now"))
_DLR_CLAIMED_BY = sa.select(dlrs_seen.c.claimed_by).where(dlrs_seen.c.dedupe_key == _p("dedupe_key"))
_UNCLAIM_DLR = sa.delete(dlrs_seen).where(dlrs_seen.c.dedupe_key == _p("dedupe_key"))


# ----- inbound ------------------------------------------------------------------------------------
class Scope(msgspec.Struct, frozen=True):
    """The configuration (and its tenant) a webhook came in for: all its look-ups stay inside."""

    tenant: str
    config_id: str


def _scoped(scope: Scope, mdr_id: str, direction: str) -> dict[str, str]:
    return {"mdr_id": mdr_id, "tenant": scope.tenant, "config_id": scope.config_id, "direction": direction}


def inbound_seen(c: sa.Connection, scope: Scope, mdr_id: str) -> bool:
    return run(c, _SCOPED_ID, _scoped(scope, mdr_id, "inbound")).first() is not None


def record_inbound(c: sa.Connection, event: InboundMessage, now: datetime) -> bool:
    message_id = run(c, _NEW_MESSAGE[c.dialect.name], {
        "direction": "inbound", "tenant": event.tenant, "config_id": event.config_id, "mdr_id": event.mdr_id,
        "from_number": event.from_, "to_number": event.to, "body": event.body, "is_mms": event.is_mms,
        "state": "received", "created_at": now, "updated_at": now,
    }).scalar()
    if message_id is None:
        return False
    add_history(c, message_id, "received", now)
    return True


# ----- outbound -----------------------------------------------------------------------------------
def record_request(c: sa.Connection, request: DispatchRequest, now: datetime) -> bool:
    message_id = c.execute(_NEW_MESSAGE[c.dialect.name], {
        "direction": "outbound", "tenant": request.tenant, "config_id": request.config_id,
        "client_message_id": request.client_message_id, "from_number": request.from_, "to_number": request.to,
        "from_extension": request.from_extension, "body": request.body, "is_mms": request.is_mms,
        "segments": request.segments, "state": "queued", "dispatch_state": "queued", "created_at": now,
        "updated_at": now,
    }).scalar()
    if message_id is None:
        return False
    add_history(c, message_id, "queued", now)
    return True


def outbound(c: sa.Connection, tenant: str, client_message_id: str) -> MessageRow | None:
    row = run(c, _ROW_BY_CLIENT_ID, {"tenant": tenant, "client_message_id": client_message_id}).first()
    return message_row(row._mapping) if row else None


def held_mdrs(c: sa.Connection, mdr_ids: list[str]) -> set[str]:
    """Those of `mdr_ids` that an outbound message in the ledger already has (`OUTBOUND_BY_MDR`
    says why not an inbound one)."""
    if not mdr_ids:
        return set()
    query = sa.select(messages.c.mdr_id).where(messages.c.mdr_id.in_(mdr_ids) & (messages.c.direction == "outbound"))
    return set(c.execute(query).scalars())


def alike_in_doubt(c: sa.Connection, row: MessageRow, since: datetime) -> list[datetime]:
    """When other requests with the same tenant, from, to and body, still "sending" (maybe sent,
    never settled) and touched since `since`, started sending: their texts and this one's cannot
    be told apart at Flowroute. Older ones are no longer retried (their message ran out of time)."""
    query = sa.select(messages.c.send_started_at, messages.c.updated_at).where(
        (messages.c.direction == "outbound") & (messages.c.tenant == row.tenant)
        & (messages.c.to_number == row.to_number) & (messages.c.from_number == row.from_number)
        & (messages.c.body == row.body) & (messages.c.dispatch_state == "sending") & (messages.c.id != row.id)
        & (messages.c.updated_at >= since))
    return [utc(r.send_started_at or r.updated_at) for r in c.execute(query)]  # type: ignore[misc]


def mark_sending(c: sa.Connection, message_id: int, now: datetime) -> None:
    run(c, _SENDING, {"message_id": message_id, "now": now})


def mark_queued(c: sa.Connection, message_id: int, reason: str, now: datetime) -> None:
    c.execute(_REQUEUED, {"message_id": message_id, "new_reason": reason, "now": now})


def record_failed(c: sa.Connection, message_id: int, code: str, reason: str, now: datetime) -> None:
    c.execute(_DONE, {"message_id": message_id, "now": now})
    advance(c, message_id, "failed", now, code, reason)


# ----- delivery receipts --------------------------------------------------------------------------
def claim_dlr(c: sa.Connection, dedupe_key: str, mdr_id: str, now: datetime, claimed_by: str | None = None) -> bool:
    """True the first time this exact receipt is seen, and again for the event `claimed_by` that
    claimed it (the same broker event coming again); False for a resend (another event)."""
    return _claim_dlr(c, dedupe_key, mdr_id, now, claimed_by) is not None


def _claim_dlr(c: sa.Connection, dedupe_key: str, mdr_id: str, now: datetime,
               claimed_by: str | None) -> Literal["new", "own"] | None:
    """The claim of a receipt: "new" (claimed now), "own" (claimed before by this same event) or
    None (by another event; or by an unknown one: rows from before `claimed_by` existed, and
    callers that name no event, keep the old rule that a second sight is a resend)."""
    key, by = dedupe_key[:255], claimed_by[:64] if claimed_by else None
    inserted = c.execute(_NEW_DLR[c.dialect.name], {"dedupe_key": key, "mdr_id": mdr_id, "seen_at": now,
                                                    "claimed_by": by})
    if inserted.rowcount == 1:
        return "new"
    if by is not None and c.execute(_DLR_CLAIMED_BY, {"dedupe_key": key}).scalar() == by:
        return "own"
    return None


def claim_and_record_dlr(c: sa.Connection, dedupe_key: str, scope: Scope, mdr_id: str, state: str,
                         reason_code: str | None, reason: str | None, level: int | None, code: int | None,
                         now: datetime, claimed_by: str | None = None) -> bool:
    """The first sight of this exact receipt and its effect on the message, in one transaction:
    False (and nothing changed) for a resend. A failure leaves neither, so a retry is not taken
    for a resend. A COMMIT whose answer was lost (a reset connection, the transaction deadline
    firing after the server committed) leaves both while the caller saw an outage: the retry of
    that same event (`claimed_by`: its event id, the same on every redelivery, new for each
    Flowroute resend) finds its own claim and gets True without recording again (the effect was
    committed with the claim), so its status is still forwarded."""
    claim = _claim_dlr(c, dedupe_key, mdr_id, now, claimed_by)
    if claim == "new":
        record_dlr(c, scope, mdr_id, state, reason_code, reason, level, code, now)
    return claim is not None


def unclaim_dlr(c: sa.Connection, dedupe_key: str) -> None:
    c.execute(_UNCLAIM_DLR, {"dedupe_key": dedupe_key[:255]})


def receipt_target(c: sa.Connection, scope: Scope, mdr_id: str) -> MessageRow | None:
    """The outbound message of this configuration that a receipt for `mdr_id` is about."""
    row = c.execute(_SCOPED_ROW, _scoped(scope, mdr_id, "outbound")).first()
    return message_row(row._mapping) if row else None


def record_dlr(c: sa.Connection, scope: Scope, mdr_id: str, state: str, reason_code: str | None,
               reason: str | None, level: int | None, code: int | None, now: datetime) -> MessageRow | None:
    row = c.execute(_SCOPED_ROW, _scoped(scope, mdr_id, "outbound")).first()
    if row is None:
        return None
    advance(c, row.id, state, now, reason_code, reason, level, code)
    return message_row(row._mapping)


# ----- state --------------------------------------------------------------------------------------
def add_history(c: sa.Connection, message_id: int, state: str, now: datetime, reason_code: str | None = None,
                reason: str | None = None, level: int | None = None, code: int | None = None) -> None:
    """One line of the message's history (the current state is `advance`'s to move)."""
    run(c, _ADD_HISTORY, {"message_id": message_id, "state": state, "reason_code": reason_code,
                             "reason": reason, "dlr_level": level, "dlr_code": code, "at": now})


def movable_from(state: str) -> list[str]:
    """The current states that `state` may replace: not a final one, and none ranked above it."""
    rank = STATE_RANK.get(state, 0)
    return [current for current, r in STATE_RANK.items() if r <= rank and current not in FINAL]


def advance(c: sa.Connection, message_id: int, state: str, now: datetime, reason_code: str | None = None,
            reason: str | None = None, level: int | None = None, code: int | None = None) -> None:
    """Add to the history; move the current state only forward (one guarded UPDATE, no read)."""
    add_history(c, message_id, state, now, reason_code, reason, level, code)
    run(c, _move_state(tuple(movable_from(state))), {"message_id": message_id, "new_state": state,
                                                        "new_reason_code": reason_code, "new_reason": reason,
                                                        "now": now})



@functools.cache
def _move_state(movable: tuple[str, ...]) -> sa.Update:
    """The guarded UPDATE for one set of movable states, built once. `state = … OR state = …`
    rather than `IN`: SQLAlchemy renders an IN list afresh at every execution (42 against 24 µs
    per UPDATE on SQLite, measured)."""
    guard = sa.or_(*(messages.c.state == current for current in movable)) if movable else sa.false()
    return _UPDATE_MESSAGE.where(guard).values(
        state=_p("new_state"), reason_code=_p("new_reason_code"),
        reason=sa.func.coalesce(_p("new_reason", type_=sa.Text), messages.c.reason), updated_at=_p("now"))


# ----- history ------------------------------------------------------------------------------------
def message_rows(c: sa.Connection, query: sa.Select[Any]) -> list[MessageRow]:
    return [message_row(row._mapping) for row in c.execute(query)]


_HISTORY = (sa.select(status_history.c.state, status_history.c.reason_code, status_history.c.reason,
                      status_history.c.dlr_level, status_history.c.dlr_code, status_history.c.at)
            .where(status_history.c.message_id == _p("message_id")).order_by(status_history.c.id))


def history(c: sa.Connection, message_id: int) -> list[StatusRow]:
    return [StatusRow(**{**dict(row._mapping), "at": utc(row.at)})
            for row in c.execute(_HISTORY, {"message_id": message_id})]


@unhurried
def prune(c: sa.Connection, cutoff: datetime) -> int:
    old = sa.select(messages.c.id).where(messages.c.updated_at < cutoff)
    c.execute(sa.delete(status_history).where(status_history.c.message_id.in_(old)))
    removed = c.execute(sa.delete(messages).where(messages.c.updated_at < cutoff))
    c.execute(sa.delete(deliveries).where(deliveries.c.updated_at < cutoff))
    c.execute(sa.delete(dlrs_seen).where(dlrs_seen.c.seen_at < cutoff))
    return int(removed.rowcount or 0)
