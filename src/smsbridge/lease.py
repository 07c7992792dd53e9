"""A delivery claim's lease while its attempt runs (pure arithmetic; `workers/held.py` runs it).

A claim (`ledger/ops.py`, `claim_delivery`) lasts `targets.delivery_lease_s`. One attempt may
take longer than that: a long SIP text goes as n parts one after another, each up to two
transactions, and again in parts half the size after a 413/513. So the worker renews the lease
while the attempt runs, and the attempt stops before the lease it last renewed ends, whatever
the target kind. Times here are the worker's monotonic clock, read *before* the ledger write
that set the lease (the ledger's `lease_until` is then at least that late).

- A renewal every third of the lease: a renewal that fails (the ledger slow or away) is tried
  again once before the stop.
- The stop a quarter of the lease before its end: room for the cancelled attempt to end, for a
  request already on the wire, and for clocks of two hosts that differ by a little (another
  worker compares `lease_until` with its own wall clock).
"""

from __future__ import annotations

RENEWALS_PER_LEASE = 3
STOP_MARGIN_SHARE = 0.25


def renew_every_s(lease_s: float) -> float:
    """The pause between the starts of two renewals."""
    return lease_s / RENEWALS_PER_LEASE


def stop_margin_s(lease_s: float) -> float:
    """How long before its lease ends an attempt has stopped."""
    return lease_s * STOP_MARGIN_SHARE


def stop_at(held_from: float, lease_s: float) -> float:
    """When an attempt must stop, its claim taken or last renewed at `held_from`."""
    return held_from + lease_s - stop_margin_s(lease_s)


def next_renewal_at(last_started: float, lease_s: float) -> float:
    """When the next renewal starts, the last one (or the claim) started at `last_started`."""
    return last_started + renew_every_s(lease_s)
