"""The relay API's transactions: one row per accepted send, keyed by the bridge's own id.

A send is recorded `pending` before its publish and `queued` once the broker confirmed it; a
failed publish removes the row, so the client's retry is welcome. An `Idempotency-Key` already
used by the tenant within the window returns the first row instead of a new one.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
import sqlalchemy as sa

from smsbridge.ledger.ops import insert_or_skip, utc
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


_p = sa.bindparam
_INSERT = insert_or_skip(relay_sends)
_BY_KEY = sa.select(relay_sends).where((relay_sends.c.tenant == _p("tenant"))
                                       & (relay_sends.c.idempotency_key == _p("key")))
_BY_ID = sa.select(relay_sends).where((relay_sends.c.tenant == _p("tenant"))
                                      & (relay_sends.c.bridge_id == _p("id")))
_DELETE = sa.delete(relay_sends).where(relay_sends.c.bridge_id == _p("id"))
_QUEUED = sa.update(relay_sends).where(relay_sends.c.bridge_id == _p("id")).values(state="queued")


def _row(mapping: sa.RowMapping) -> RelaySend:
    data = dict(mapping)
    data["created_at"] = utc(data["created_at"])
    return RelaySend(**data)


def claim(c: sa.Connection, send: RelaySend, window_start: datetime, stale_before: datetime) -> RelaySend | None:
    """Record `send`; None when recorded. When its idempotency key is taken by a row of this
    window, that row (unless it is a `pending` one abandoned before `stale_before`)."""
    if run(c, _INSERT[c.dialect.name], msgspec.structs.asdict(send)).rowcount == 1:
        return None
    found = run(c, _BY_KEY, {"tenant": send.tenant, "key": send.idempotency_key}).first()
    if found is not None:
        existing = _row(found._mapping)
        abandoned = existing.state == "pending" and existing.created_at < stale_before
        if existing.created_at >= window_start and not abandoned:
            return existing
        run(c, _DELETE, {"id": existing.bridge_id})
    run(c, _INSERT[c.dialect.name], msgspec.structs.asdict(send))
    return None


def queued(c: sa.Connection, bridge_id: str) -> None:
    run(c, _QUEUED, {"id": bridge_id})


def forget(c: sa.Connection, bridge_id: str) -> None:
    run(c, _DELETE, {"id": bridge_id})


def find(c: sa.Connection, tenant: str, bridge_id: str) -> RelaySend | None:
    found = run(c, _BY_ID, {"tenant": tenant, "id": bridge_id}).first()
    return _row(found._mapping) if found is not None else None


@unhurried
def prune(c: sa.Connection, cutoff: datetime) -> None:
    c.execute(sa.delete(relay_sends).where(relay_sends.c.created_at < cutoff))
