"""What a SIP final answer to MESSAGE means for a delivery: one pure function (RFC 3428 §7).

200 is the phone's own answer; 202 is a relay or store-and-forward that took the text (RFC 3428:
the sender "MUST NOT assume" it was delivered), kept as a state of its own. Busy, offline and
overloaded answers are retried; "too large" is retried smaller; refusals are permanent.
"""

from __future__ import annotations

import enum

RETRY = frozenset({404, 408, 480, 486, 500, 503, 504})
RESPLIT = frozenset({413, 513})
CHALLENGE = frozenset({401, 407})


class Answer(enum.Enum):
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    CHALLENGE = "challenge"
    RETRY = "retry"
    RESPLIT = "resplit"
    PERMANENT = "permanent"


def classify(status: int) -> Answer:
    if status == 202:
        return Answer.ACCEPTED
    if 200 <= status < 300:
        return Answer.DELIVERED
    if status in CHALLENGE:
        return Answer.CHALLENGE
    if status in RESPLIT:
        return Answer.RESPLIT
    if status in RETRY or 500 <= status < 600:
        return Answer.RETRY
    return Answer.PERMANENT  # 3xx (no redirects followed), other 4xx (403, 405, 415, 488 ...), 6xx
