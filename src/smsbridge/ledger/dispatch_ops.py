"""The dispatcher's own ledger transactions, beside `ops.py`: what a dispatcher that takes an
account over reads of the attempts before it (`flowroute/limiter.py` says why that suffices),
and the touch that makes a lookup in Flowroute's list visible to it."""

from __future__ import annotations

from datetime import datetime

import msgspec
import sqlalchemy as sa

from smsbridge.ledger.ops import utc
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
