"""After a crash or a lost answer: was this request's text sent? A pure decision over what
Flowroute's message list shows and what the ledger already knows.

Flowroute has no idempotency key, so a text is recognised by its from, to and body. That cannot
tell apart two requests with the same text, so the rules are:
- an MDR the ledger already holds belongs to that message, never to this request;
- an MDR Flowroute created before this request started sending (its timestamp more than
  `skew` before our `send_started_at`) is an earlier text, never this request's send;
- requests with the same text still "sending" (in doubt, like this one) share what is left:
  none left means none of them was sent; exactly one each means each was; anything in between
  cannot be decided, and the request is parked (`send_in_doubt`) for a person. Never sent twice,
  never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

CLOCK_SKEW = timedelta(seconds=5)  # our clock against Flowroute's, both NTP-synchronised


@dataclass(frozen=True)
class SentText:
    mdr_id: str
    at: datetime | None  # Flowroute's timestamp; None when unreadable


@dataclass(frozen=True)
class Lookup:
    found: list[SentText] = field(default_factory=list)
    complete: bool = True  # False: the list had more pages than we read


@dataclass(frozen=True)
class NotSent:
    pass


@dataclass(frozen=True)
class AlreadySent:
    mdr_id: str


@dataclass(frozen=True)
class InDoubt:
    reason: str


def decide(lookup: Lookup, held: set[str], started: datetime, alike_started: list[datetime],
           skew: timedelta = CLOCK_SKEW) -> NotSent | AlreadySent | InDoubt:
    """`started`: when this request started sending; `alike_started`: the same for the other
    requests with this text still in doubt."""
    if not lookup.complete:
        return InDoubt("Flowroute's message list was too long to read in full")
    earliest = min([started, *alike_started]) - skew
    left = [s for s in lookup.found if s.mdr_id not in held and (s.at is None or s.at >= earliest)]
    in_doubt = 1 + len(alike_started)
    if not left:
        return NotSent()
    if len(left) == in_doubt:
        mine = sorted((s for s in left if s.at is None or s.at >= started - skew),
                      key=lambda s: (s.at is None, s.at or started))
        if mine:
            return AlreadySent(mine[0].mdr_id)
    return InDoubt(f"{len(left)} unrecorded text(s) alike at Flowroute for {in_doubt} request(s) in doubt")
