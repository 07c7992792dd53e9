"""Inbound texts reach each extension in the order they reached the receiver, one conversation
(SMS configuration, DID, sender) at a time, across retries and across delivery processes.

Why the ledger and not the broker: a retry waits in a delay queue, so queue order cannot hold
a later text back while an earlier one retries; a queue per conversation with a single active
consumer would mean unbounded queues, and sharding conversations over a few such queues would
let one tenant's dead PBX stall another tenant's texts. So each conversation is a short queue
in the ledger, and only its head is in RabbitMQ at a time:

- the inbound stage records every (text, extension) as `waiting`, in arrival order
  (`received_at`, the receiver's clock; then the Flowroute id), and publishes the first one
  not yet done (the head) as `live`;
- a delivery worker delivers a text only while it is its conversation's head; a copy that is
  not (possible after a race between inbound processes) is dropped, its row set back to
  `waiting`: the ledger still has the text;
- when the head is delivered or dead-lettered it becomes `done`, and the same transaction
  makes the next one `live`, which the caller publishes;
- a head that has made no progress for a long time (lost between a commit and its publish, or
  dead-lettered by the broker without our knowing) is republished and released: its
  successors go on, and it is delivered when it comes (`release_stale`).

Every function runs inside one ledger transaction and takes the conversation's lock first
(PostgreSQL: an advisory transaction lock; SQLite: every write transaction is exclusive).
A text is never lost: until it is `done` its body is in this table, and a `live` text whose
publish was lost is republished by the sweep. A text can be published twice (a redone
inbound step, a sweep): the delivery claims make the second copy a no-op.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from smsbridge.ledger import claims, ops
from smsbridge.ledger.claims import DeliveryKey
from smsbridge.ledger.prepared import execute as run
from smsbridge.ledger.runner import unhurried
from smsbridge.ledger.schema import delivery_order as order

_p = sa.bindparam


class Turn(enum.Enum):
    GO = "go"  # its turn (or not ordered: a replay), and claimed: deliver it
    DONE = "done"  # already delivered to this extension
    BUSY = "busy"  # another worker holds a live lease on it
    WAIT = "wait"  # an earlier text of its conversation is not done: drop this copy, the ledger keeps it


_TURN_OF = {claims.Claim.NEW: Turn.GO, claims.Claim.DONE: Turn.DONE, claims.Claim.BUSY: Turn.BUSY}


@dataclass(frozen=True)
class Entry:
    key: DeliveryKey
    conversation: str
    received_at: datetime
    body: bytes  # the encoded delivery, as published


# The same key as a delivery claim's (`claims.DeliveryKey.params`).
_KEY = ((order.c.config_id == _p("key_config_id")) & (order.c.mdr_id == _p("key_mdr_id"))
        & (order.c.extension == _p("key_extension")))
_NEW = ops.insert_or_skip(order)
_ROW = sa.select(order.c.conversation, order.c.state, order.c.updated_at).where(_KEY)
_HEAD = (sa.select(order.c.config_id, order.c.mdr_id, order.c.extension, order.c.state, order.c.body)
         .where((order.c.conversation == _p("conversation")) & (order.c.state != "done"))
         .order_by(order.c.received_at, order.c.mdr_id, order.c.extension).limit(1))
_SET_STATE = sa.update(order).where(_KEY).values(state=_p("new_state"), updated_at=_p("now"))
_earlier = order.alias("earlier")
_STALE_HEADS = (
    sa.select(order.c.config_id, order.c.mdr_id, order.c.extension, order.c.body)
    .where((order.c.state != "done") & (order.c.updated_at < _p("cutoff")))
    .where(~sa.exists().where(
        (_earlier.c.conversation == order.c.conversation) & (_earlier.c.state != "done")
        & (sa.tuple_(_earlier.c.received_at, _earlier.c.mdr_id, _earlier.c.extension)
           < sa.tuple_(order.c.received_at, order.c.mdr_id, order.c.extension))))
    .limit(_p("limit"))
)
_PRUNE = sa.delete(order).where((order.c.state == "done") & (order.c.updated_at < _p("cutoff")))


_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(_p("conversation", type_=sa.Text))))


def _lock(c: sa.Connection, conversation: str) -> None:
    if c.dialect.name == "postgresql":  # held until commit; SQLite's BEGIN IMMEDIATE already excludes
        run(c, _LOCK, {"conversation": conversation}).first()


def _head_key(head: Any) -> DeliveryKey:
    return DeliveryKey(head.config_id, head.mdr_id, head.extension)


def _promote(c: sa.Connection, conversation: str, now: datetime,
             own: frozenset[DeliveryKey] = frozenset()) -> list[bytes]:
    """Make the conversation's head `live` if it was waiting, and return it to publish. One of
    `own` (texts this call enqueues) is returned even when already live: a redone inbound step
    may have committed before its publish was confirmed."""
    head = run(c, _HEAD, {"conversation": conversation}).first()
    if head is None or (head.state != "waiting" and _head_key(head) not in own):
        return []
    run(c, _SET_STATE, {**_head_key(head).params(), "new_state": "live", "now": now})
    return [bytes(head.body)]


def enqueue(c: sa.Connection, entries: Iterable[Entry], now: datetime) -> list[bytes]:
    """Record texts the inbound stage routed; return those whose turn it is (publish them)."""
    entries = list(entries)
    for entry in entries:
        _lock(c, entry.conversation)
        run(c, _NEW[c.dialect.name], {
            "config_id": entry.key.config_id, "mdr_id": entry.key.mdr_id, "extension": entry.key.extension,
            "conversation": entry.conversation, "received_at": entry.received_at, "state": "waiting",
            "body": entry.body, "updated_at": now})
    own = frozenset(e.key for e in entries)
    return [body for conversation in dict.fromkeys(e.conversation for e in entries)
            for body in _promote(c, conversation, now, own)]


def enqueue_unseen(c: sa.Connection, scope: ops.Scope, mdr_id: str, entries: Iterable[Entry],
                   now: datetime) -> list[bytes] | None:
    """`enqueue`, or None (nothing written) when the inbound stage already handled this text
    (`ops.inbound_seen`: a Flowroute resend). The check and the write share one transaction:
    one trip to the database on the way to the PBX instead of two."""
    if ops.inbound_seen(c, scope, mdr_id):
        return None
    return enqueue(c, entries, now)


def claim(c: sa.Connection, key: DeliveryKey, now: datetime, lease: datetime) -> tuple[Turn, list[bytes]]:
    """Its turn? Then the delivery claim too (`claims.claim_delivery`). Also returns texts that
    became due (publish them): none, unless the claim finds the text already delivered."""
    row = run(c, _ROW, key.params()).first()
    if row is not None and row.state != "done":
        _lock(c, row.conversation)
        head = run(c, _HEAD, {"conversation": row.conversation}).first()
        if head is not None and _head_key(head) != key:
            run(c, _SET_STATE, {**key.params(), "new_state": "waiting", "now": now})
            return Turn.WAIT, []
        # Touched on every attempt: a head retrying while the PBX is down is not "stale".
        run(c, _SET_STATE, {**key.params(), "new_state": "live", "now": now})
    result = _TURN_OF[claims.claim_delivery(c, key, now, lease)]
    due = settle(c, key, now) if result is Turn.DONE else []
    return result, due


def renew(c: sa.Connection, key: DeliveryKey, held: frozenset[datetime], now: datetime, lease: datetime) -> bool:
    """Extend a held claim (`claims.renew_delivery`) and touch its order row: a head whose long
    delivery is still running is not stale (the sweep would release its conversation)."""
    if not claims.renew_delivery(c, key, held, now, lease):
        return False
    row = run(c, _ROW, key.params()).first()
    if row is not None and row.state != "done":
        _lock(c, row.conversation)
        run(c, _SET_STATE, {**key.params(), "new_state": "live", "now": now})
    return True


def settle(c: sa.Connection, key: DeliveryKey, now: datetime) -> list[bytes]:
    """The text is done with (delivered, dead-lettered or released): return its successor if due."""
    row = run(c, _ROW, key.params()).first()
    if row is None or row.state == "done":
        return []
    _lock(c, row.conversation)
    run(c, _SET_STATE, {**key.params(), "new_state": "done", "now": now})
    return _promote(c, row.conversation, now)


def delivered(c: sa.Connection, key: DeliveryKey, now: datetime, state: str = "delivered") -> list[bytes]:
    claims.delivered(c, key, now, state)
    return settle(c, key, now)


def stale_heads(c: sa.Connection, cutoff: datetime, limit: int = 100) -> list[tuple[DeliveryKey, bytes]]:
    """Heads untouched since `cutoff`: lost, or dead-lettered by the broker (delivery limit)."""
    return [(_head_key(r), bytes(r.body)) for r in c.execute(_STALE_HEADS, {"cutoff": cutoff, "limit": limit})]


def release(c: sa.Connection, key: DeliveryKey, cutoff: datetime, now: datetime) -> list[bytes]:
    """Stop holding the conversation for a stale head (already republished by the caller)."""
    row = run(c, _ROW, key.params()).first()
    if row is None or row.state == "done" or ops.utc(row.updated_at) >= cutoff:  # type: ignore[operator]
        return []  # it moved meanwhile
    return settle(c, key, now)


@unhurried
def prune(c: sa.Connection, cutoff: datetime) -> int:
    return int(c.execute(_PRUNE, {"cutoff": cutoff}).rowcount or 0)
