"""The dispatcher's own ledger transactions, beside `ops.py`: the claim that starts a send (one
transaction: read the request's row and mark it `sending`), what a dispatcher that takes an
account over reads of the attempts before it (`flowroute/limiter.py` says why that suffices),
and the touch that makes a lookup in Flowroute's list visible to it."""

from __future__ import annotations

from datetime import datetime

import msgspec
import sqlalchemy as sa

from smsbridge.events import DispatchRequest
from smsbridge.ledger import ops
from smsbridge.ledger.ops import MessageRow, utc
from smsbridge.ledger.prepared import execute as run
from smsbridge.ledger.schema import messages

_p = sa.bindparam


class RecentSend(msgspec.Struct, frozen=True):
    """A message with an attempt to Flowroute: whether it is still `sending` (no end recorded),
    and when it was last written (its latest attempt ended no later)."""

    sending: bool
    is_mms: bool
    at: datetime


_RECENT = sa.select(messages.c.config_id, messages.c.dispatch_state, messages.c.is_mms, messages.c.updated_at).where(
    (messages.c.updated_at >= _p("since")) & (messages.c.direction == "outbound")
    & messages.c.send_started_at.is_not(None))
_MOVABLE = ops.movable_from("accepted")
_MOVES = sa.or_(*(messages.c.state == state for state in _MOVABLE))
# One UPDATE for the send settled and the state moved forward (if it may).
_ACCEPT = sa.update(messages).where(messages.c.id == _p("message_id")).values(
    dispatch_state="done", mdr_id=_p("new_mdr_id"), segments=_p("new_segments"), reason=None, updated_at=_p("now"),
    state=sa.case((_MOVES, "accepted"), else_=messages.c.state),
    reason_code=sa.case((_MOVES, None), else_=messages.c.reason_code))
# The same UPDATE, only while no other outbound message holds the Flowroute id (no match then:
# `accept` reads who does). The common case is one statement instead of a read and then the UPDATE.
_OTHER = messages.alias("other")
_ACCEPT_UNHELD = _ACCEPT.where(~sa.exists().where((_OTHER.c.mdr_id == _p("new_mdr_id"))
                                                  & (_OTHER.c.direction == "outbound")
                                                  & (_OTHER.c.id != _p("message_id"))))
# The claim's common case in one statement: the request's row, queued and due, marked `sending`
# and read back. Keys in WHERE are named apart from the columns (a parameter named like a column is SET).
_CLAIM_DUE = (sa.update(messages)
              .where((messages.c.tenant == _p("key_tenant")) & (messages.c.client_message_id == _p("key_client_id"))
                     & (messages.c.dispatch_state == "queued")
                     & (messages.c.send_started_at.is_(None) | (messages.c.updated_at <= _p("ended_before"))))
              .values(dispatch_state="sending", send_started_at=_p("now"), updated_at=_p("now"))
              .returning(*messages.c))
_TOUCH = (sa.update(messages).where((messages.c.id == _p("message_id")) & (messages.c.dispatch_state == "sending"))
          .values(updated_at=_p("now")))


def recent_sends(c: sa.Connection, config_ids: list[str], ended_since: datetime,
                 sending_since: datetime) -> list[RecentSend]:
    """The attempts of these configurations' messages that may still count: answered ones
    written since `ended_since`, and ones still `sending` touched since `sending_since`."""
    wanted = set(config_ids)
    found = []
    for row in c.execute(_RECENT, {"since": min(ended_since, sending_since)}):
        at = utc(row.updated_at)
        assert at is not None
        sending = row.dispatch_state == "sending"
        if row.config_id in wanted and at >= (sending_since if sending else ended_since):
            found.append(RecentSend(sending, bool(row.is_mms), at))
    return found


def touch(c: sa.Connection, message_id: int, now: datetime) -> None:
    """Before a lookup of a message still `sending`: the lookup is an attempt in flight too."""
    c.execute(_TOUCH, {"message_id": message_id, "now": now})


def claim_send(c: sa.Connection, request: DispatchRequest, now: datetime, last_ended_before: datetime,
               after_lookup: bool) -> tuple[MessageRow, bool]:
    """With a rate-limit slot in hand: the request's row, marked `sending` (True) if it is ours to
    send now: queued and never tried, or tried last before `last_ended_before`; or still `sending`
    right after a lookup found it not sent (`after_lookup`). Otherwise (False) the row as it is:
    settled (a repeat), `sending` (look it up first) or tried too recently (wait, then claim
    again). Recorded first if absent (pruned, or written elsewhere).

    The common case (queued and due, not after a lookup) is one UPDATE that returns the row;
    only when it matches nothing is the row read and decided on as above."""
    if not after_lookup:
        claimed = run(c, _CLAIM_DUE, {"key_tenant": request.tenant, "key_client_id": request.client_message_id,
                                      "ended_before": last_ended_before, "now": now}).first()
        if claimed is not None:
            return ops.message_row(claimed._mapping), True
    row = ops.outbound(c, request.tenant, request.client_message_id)
    if row is None:
        ops.record_request(c, request, now)
        row = ops.outbound(c, request.tenant, request.client_message_id)
        assert row is not None
    queued_and_due = row.dispatch_state == "queued" and (
        row.send_started_at is None or row.updated_at <= last_ended_before)
    if not (queued_and_due or (after_lookup and row.dispatch_state == "sending")):
        return row, False
    ops.mark_sending(c, row.id, now)
    return msgspec.structs.replace(row, dispatch_state="sending", send_started_at=now, updated_at=now), True


def accept(c: sa.Connection, message_id: int, mdr_id: str | None, segments: int | None, now: datetime) -> bool:
    """Flowroute took the send: its id, segments and `accepted`, in two statements (the UPDATE
    guarded against an id another outbound message holds, and the history). False, and nothing
    written, when another outbound message already has this Flowroute id (an inbound text's id is
    what a webhook said: it never stops a send's, `ops.OUTBOUND_BY_MDR`)."""
    updated = run(c, _ACCEPT_UNHELD, {"message_id": message_id, "new_mdr_id": mdr_id, "new_segments": segments,
                                      "now": now})
    if updated.rowcount == 0 and mdr_id is not None:  # held elsewhere, or no such message
        holder = run(c, ops.OUTBOUND_BY_MDR, {"mdr_id": mdr_id}).scalar()
        if holder is not None and holder != message_id:
            return False
    ops.add_history(c, message_id, "accepted", now)
    return True
