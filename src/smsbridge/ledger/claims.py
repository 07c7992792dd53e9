"""Delivery claims: one per (configuration, Flowroute id, extension and target), taken with a
lease before the PBX is called, so that two workers holding copies of one delivery never both
hand it over. Keyed within the configuration the text came in for: another configuration's text
with the same Flowroute id, to an extension of the same name, is another delivery (migration 6).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from smsbridge.events import InboundDelivery
from smsbridge.ledger.ops import advance, insert_or_skip, utc
from smsbridge.ledger.prepared import execute as run
from smsbridge.ledger.schema import deliveries, messages

_p = sa.bindparam


class Claim(enum.Enum):
    NEW = "new"  # yours: go ahead
    DONE = "done"  # already delivered: skip
    BUSY = "busy"  # another worker holds a live lease: try later


class DeliveryKey(msgspec.Struct, frozen=True):
    """One delivery: the text (its configuration and Flowroute id) and where it goes (`extension`:
    the claim key, `1001#1` for the tenant's second target)."""

    config_id: str
    mdr_id: str
    extension: str

    @classmethod
    def of(cls, delivery: InboundDelivery) -> DeliveryKey:
        return cls(delivery.config_id, delivery.mdr_id, delivery.claim_key)

    def params(self) -> dict[str, Any]:
        """The key as a WHERE clause's parameters (named apart from the columns: an UPDATE's
        parameters named like a column are SET)."""
        return {"key_config_id": self.config_id, "key_mdr_id": self.mdr_id, "key_extension": self.extension}


class DeliveryRow(msgspec.Struct, frozen=True, kw_only=True):
    """Where an inbound text stands for one extension (and target: `1001#1` is the second one)."""

    extension: str
    state: str  # delivering | delivered | accepted (a relay took it, e.g. SIP 202: not proof of a phone)
    updated_at: datetime


DONE_DELIVERY_STATES = frozenset({"delivered", "accepted"})
_NEW_CLAIM = insert_or_skip(deliveries)
_KEY = ((deliveries.c.config_id == _p("key_config_id")) & (deliveries.c.mdr_id == _p("key_mdr_id"))
        & (deliveries.c.extension == _p("key_extension")))
_CLAIM = sa.select(deliveries.c.state, deliveries.c.lease_until).where(_KEY)
_TAKE_OVER = (sa.update(deliveries).where(_KEY & (deliveries.c.lease_until == _p("old_lease")))
              .values(lease_until=_p("lease"), updated_at=_p("now")))
_DELIVERED = sa.update(deliveries).where(_KEY).values(state=_p("new_state"), updated_at=_p("now"))
_RELEASE = sa.delete(deliveries).where(_KEY & (deliveries.c.state == "delivering"))
# A renewal or a release by the worker holding a claim names the leases it set (`workers/held.py`):
# a claim whose lease is none of them is another worker's.
_HELD = deliveries.c.lease_until.in_(_p("held", expanding=True))
_RENEW = (sa.update(deliveries).where(_KEY & (deliveries.c.state == "delivering") & _HELD)
          .values(lease_until=_p("lease"), updated_at=_p("now")))
_RELEASE_HELD = _RELEASE.where(_HELD)
# The inbound message a delivery belongs to: its configuration's, never another's with the same id.
_MESSAGE_ID = sa.select(messages.c.id).where(
    (messages.c.mdr_id == _p("key_mdr_id")) & (messages.c.config_id == _p("key_config_id"))
    & (messages.c.direction == "inbound"))
_DELIVERIES_OF = (sa.select(deliveries.c.extension, deliveries.c.state, deliveries.c.updated_at)
                  .where((deliveries.c.mdr_id == _p("mdr_id")) & (deliveries.c.config_id == _p("config_id")))
                  .order_by(deliveries.c.extension))
_LAST_DID = (sa.select(messages.c.to_number)
             .join(deliveries, (deliveries.c.mdr_id == messages.c.mdr_id)
                   & (deliveries.c.config_id == messages.c.config_id))
             .where((messages.c.direction == "inbound") & (messages.c.tenant == _p("tenant"))
                    & (messages.c.from_number == _p("number")) & (deliveries.c.extension == _p("extension")))
             .order_by(messages.c.id.desc()).limit(1))


def claim_delivery(c: sa.Connection, key: DeliveryKey, now: datetime, lease: datetime) -> Claim:
    inserted = run(c, _NEW_CLAIM[c.dialect.name], {
        "config_id": key.config_id, "mdr_id": key.mdr_id, "extension": key.extension, "state": "delivering",
        "lease_until": lease, "updated_at": now})
    if inserted.rowcount == 1:
        return Claim.NEW
    row = run(c, _CLAIM, key.params()).one()
    if row.state in DONE_DELIVERY_STATES:
        return Claim.DONE
    if utc(row.lease_until) > now:  # type: ignore[operator]
        return Claim.BUSY
    taken = run(c, _TAKE_OVER, {**key.params(), "old_lease": row.lease_until, "lease": lease, "now": now})
    return Claim.NEW if taken.rowcount == 1 else Claim.BUSY


def delivered(c: sa.Connection, key: DeliveryKey, now: datetime, state: str = "delivered") -> None:
    run(c, _DELIVERED, {**key.params(), "now": now, "new_state": state})
    message_id = run(c, _MESSAGE_ID, key.params()).scalar()
    if message_id is not None:
        advance(c, message_id, "delivered", now, reason=f"delivered to extension {key.extension}")


def renew_delivery(c: sa.Connection, key: DeliveryKey, held: frozenset[datetime], now: datetime,
                   lease: datetime) -> bool:
    """Extend a claim to `lease` if it still holds one of the leases in `held` (a renewal whose
    answer was lost may have committed, so the caller names every lease it may hold): False when
    it was delivered, released or taken over meanwhile (then it is not the caller's any more)."""
    return c.execute(_RENEW, {**key.params(), "held": sorted(held), "lease": lease, "now": now}).rowcount == 1


def release_delivery(c: sa.Connection, key: DeliveryKey, held: frozenset[datetime] | None = None) -> None:
    """Drop a claim not delivered; with `held`, only while its lease is one of those (the
    caller's: a claim another worker took over stays that worker's)."""
    if held is None:
        run(c, _RELEASE, key.params())
    else:
        c.execute(_RELEASE_HELD, {**key.params(), "held": sorted(held)})


def deliveries_of(c: sa.Connection, config_id: str, mdr_id: str) -> list[DeliveryRow]:
    return [DeliveryRow(extension=row.extension, state=row.state, updated_at=utc(row.updated_at))  # type: ignore[arg-type]
            for row in c.execute(_DELIVERIES_OF, {"config_id": config_id, "mdr_id": mdr_id})]


def last_did(c: sa.Connection, tenant: str, number: str, extension: str) -> str | None:
    """The DID on which `number` last texted `extension` (a reply should come from it)."""
    did = c.execute(_LAST_DID, {"tenant": tenant, "number": number, "extension": extension}).scalar()
    return None if did is None else str(did)
