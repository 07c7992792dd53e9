"""The relay API's transactions: one row per accepted send, keyed by the bridge's own id.

The states of a row (the `state` column):

- `pending`: written before its publish; the publish is in flight (a twin gets 409).
- `queued`: the broker confirmed the publish.
- `unconfirmed`: a keyed send whose publish failed. It may still have been stored (a confirm
  that timed out is ambiguous), so the row and its id are kept: the client's retry publishes the
  same request again under the same id, and the dispatcher's dedupe by (tenant,
  `client_message_id`) keeps a stored first copy from making it a second text.

A keyed `pending` row older than the stale time was abandoned by a process that died between
the broker's confirm and `queued`; it is retaken like an `unconfirmed` one, never replaced by a
new id. Retaking is one conditional UPDATE that restarts the row's clock (`created_at`), so of
two concurrent retries one republishes and the other finds it `pending` again (409). A send
without a key cannot be repeated: its row is removed when its publish fails (`forget`). With
`[relay] id_key` set, the receiver writes no row for a send without a key: the outbound stage
writes it, `queued`, in the transaction that records the request (`record`).
An `Idempotency-Key` used by the tenant within the window never gets a second id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec
import sqlalchemy as sa

from smsbridge.events import DispatchRequest
from smsbridge.ledger.ops import insert_or_skip, record_request, utc
from smsbridge.ledger.prepared import execute as run
from smsbridge.ledger.runner import unhurried
from smsbridge.ledger.schema import relay_sends


class RelaySend(msgspec.Struct, frozen=True, kw_only=True):
    bridge_id: str
    tenant: str
    access_key: str
    idempotency_key: str | None
    request_hash: str
    state: str
    dlr_callback: str | None
    created_at: datetime


class Retaken(msgspec.Struct, frozen=True):
    """An earlier send of this key that was never confirmed, now the caller's to publish again
    under its id (`send.bridge_id`)."""

    send: RelaySend


Verdict = Literal["new", "answer", "retake"]


def verdict(existing: RelaySend, send: RelaySend, window_start: datetime, stale_before: datetime) -> Verdict:
    """What a keyed `send` does with the row `existing` that holds its key: `new` (the row is from
    before the window: the key is free again), `retake` (the same request, never confirmed:
    publish it again under the row's id) or `answer` (the caller answers from the row: the first
    id, 409 while it is in flight, 422 for a different request)."""
    if existing.created_at < window_start:
        return "new"
    if existing.request_hash != send.request_hash:
        return "answer"
    abandoned = existing.state == "pending" and existing.created_at < stale_before
    return "retake" if existing.state == "unconfirmed" or abandoned else "answer"


_p = sa.bindparam
_INSERT = insert_or_skip(relay_sends)
_BY_KEY = sa.select(relay_sends).where((relay_sends.c.tenant == _p("tenant"))
                                       & (relay_sends.c.idempotency_key == _p("key")))
_BY_ID = sa.select(relay_sends).where((relay_sends.c.tenant == _p("tenant"))
                                      & (relay_sends.c.bridge_id == _p("id")))
_DELETE = sa.delete(relay_sends).where(relay_sends.c.bridge_id == _p("id"))
_QUEUED = sa.update(relay_sends).where(relay_sends.c.bridge_id == _p("id")).values(state="queued")
_UNCONFIRMED = (sa.update(relay_sends).where((relay_sends.c.bridge_id == _p("id"))
                                             & (relay_sends.c.state == "pending")).values(state="unconfirmed"))
# Only while the row may still be retaken: a concurrent retry that retook it first has made it
# `pending` with a fresh clock, and this one then changes nothing.
_RETAKE = sa.update(relay_sends).where(
    (relay_sends.c.bridge_id == _p("id"))
    & ((relay_sends.c.state == "unconfirmed")
       | ((relay_sends.c.state == "pending") & (relay_sends.c.created_at < _p("stale_before"))))
).values(state="pending", created_at=_p("now"))


def _row(mapping: sa.RowMapping) -> RelaySend:
    data = dict(mapping)
    data["created_at"] = utc(data["created_at"])
    return RelaySend(**data)


def claim(c: sa.Connection, send: RelaySend, window_start: datetime,
          stale_before: datetime) -> RelaySend | Retaken | None:
    """Record `send`; None when recorded. When its idempotency key is taken by a row of this
    window: that row (the caller answers from it), or `Retaken` when it was never confirmed and
    is now the caller's to publish again (module docstring)."""
    if run(c, _INSERT[c.dialect.name], msgspec.structs.asdict(send)).rowcount == 1:
        return None
    found = run(c, _BY_KEY, {"tenant": send.tenant, "key": send.idempotency_key}).first()
    if found is not None:
        existing = _row(found._mapping)
        decided = verdict(existing, send, window_start, stale_before)
        if decided == "answer":
            return existing
        if decided == "retake":
            return _retake(c, existing, send.created_at, stale_before)
        return _replace(c, existing, send)
    return _replace(c, None, send)  # the row that held the key went meanwhile


def _replace(c: sa.Connection, expired: RelaySend | None, send: RelaySend) -> RelaySend | None:
    """Record `send` in place of `expired` (a row from before the window, as read); None when
    recorded. A concurrent retry that replaced it first holds the key now: its row, as for any
    twin (never a second id for the key: both would be published)."""
    if expired is not None:
        run(c, _DELETE, {"id": expired.bridge_id})
    if run(c, _INSERT[c.dialect.name], msgspec.structs.asdict(send)).rowcount == 1:
        return None
    holder = run(c, _BY_KEY, {"tenant": send.tenant, "key": send.idempotency_key}).first()
    if holder is None:  # skipped for its bridge id: ids are random, so this is a caller's bug
        raise RuntimeError(f"relay send {send.bridge_id} not recorded: its id is taken")
    return _row(holder._mapping)


def _retake(c: sa.Connection, existing: RelaySend, now: datetime, stale_before: datetime) -> RelaySend | Retaken:
    if run(c, _RETAKE, {"id": existing.bridge_id, "now": now, "stale_before": stale_before}).rowcount == 1:
        return Retaken(msgspec.structs.replace(existing, state="pending", created_at=now))
    return msgspec.structs.replace(existing, state="pending")  # a concurrent retry retook it first


def record(c: sa.Connection, send: RelaySend) -> None:
    """Record the row of a send without a key, as the outbound stage takes its request: once,
    whether the request comes again (a redelivery, the dispatcher's repeat) or the receiver of
    an earlier version wrote it already."""
    run(c, _INSERT[c.dialect.name], msgspec.structs.asdict(send))


def record_with_request(c: sa.Connection, send: RelaySend, request: DispatchRequest, now: datetime) -> bool:
    """`record` and `ops.record_request` in one transaction: the send's row is there as soon as
    its request is, for the statuses that follow (`workers/relay_dlr.py`) and lookups."""
    record(c, send)
    return record_request(c, request, now)


def queued(c: sa.Connection, bridge_id: str) -> None:
    run(c, _QUEUED, {"id": bridge_id})


def unconfirmed(c: sa.Connection, bridge_id: str) -> None:
    """A keyed send's publish failed: keep its row and id for the client's retry."""
    run(c, _UNCONFIRMED, {"id": bridge_id})


def forget(c: sa.Connection, bridge_id: str) -> None:
    run(c, _DELETE, {"id": bridge_id})


def find(c: sa.Connection, tenant: str, bridge_id: str) -> RelaySend | None:
    found = run(c, _BY_ID, {"tenant": tenant, "id": bridge_id}).first()
    return _row(found._mapping) if found is not None else None


@unhurried
def prune(c: sa.Connection, cutoff: datetime) -> None:
    c.execute(sa.delete(relay_sends).where(relay_sends.c.created_at < cutoff))
