"""The ids the relay API gives its sends, and how the bridge tells its own from made-up ones.

An id is shaped like Flowroute's (`mdr2-` and 32 hex digits). With `[relay] id_key` set, it is
5 digits of issue hour (hours since 2020-01-01 UTC, enough until 2139), 16 random digits (64
bits), and an 11-digit HMAC-SHA256 tag over the tenant and those first 21 digits: a receiver can
then answer `GET /v2.2/messages/{id}` for a send it accepted before any row of it exists (a send
without an `Idempotency-Key` gets its row from the outbound stage), while an id someone made up,
or another tenant's, still finds nothing, and one issued too long ago to be still on its way
can be told from one still coming (`issued_at`). Nothing is looked up to check an id.

44 bits of tag make a guess that passes one in 2^44 (1.8e13). `relay_sends.bridge_id` is unique
across tenants and an outbound request's id is unique within its tenant, so two equal ids would
clash: the second send would get no row of its own, and within a tenant would be taken for a
repeat of the first and not sent. Only ids of the same hour can be equal; n of them clash with a
chance of about n^2 / 2^65 (a million sends an hour: 2.7e-8 an hour, 1 in 400 over ten years of
such hours; the 80 random bits of the ids before made a clash less likely over any span
shorter than 7.5 years).

`previous_id_keys` still verify (a rotation: ids issued under the old key are on their way),
never sign.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from smsbridge.secret import Secret

PREFIX = "mdr2-"
SHAPE = re.compile(r"mdr2-[0-9a-f]{32}")
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
HOUR_DIGITS = 5
RANDOM_DIGITS = 16
SIGNED_DIGITS = HOUR_DIGITS + RANDOM_DIGITS
TAG_DIGITS = 32 - SIGNED_DIGITS  # 11


def _tag(key: Secret, tenant: str, part: str) -> str:
    message = f"{tenant}\x00{part}".encode()
    return hmac.digest(key.reveal().encode(), message, hashlib.sha256).hex()[:TAG_DIGITS]


def new_id(key: Secret | None, tenant: str, now: datetime | None = None) -> str:
    """A fresh id for a send of `tenant` issued at `now` (default: the clock): signed when there
    is a key, else 128 random bits."""
    if key is None:
        return f"{PREFIX}{random.getrandbits(128):032x}"
    hours = int(((now or datetime.now(UTC)) - EPOCH) // timedelta(hours=1))
    part = f"{hours:0{HOUR_DIGITS}x}{random.getrandbits(4 * RANDOM_DIGITS):0{RANDOM_DIGITS}x}"
    return f"{PREFIX}{part}{_tag(key, tenant, part)}"


def issued_at(keys: Sequence[Secret], tenant: str, message_id: str) -> datetime | None:
    """The hour `message_id` was issued, if one of `keys` signed it for `tenant`; else None."""
    if not keys or not SHAPE.fullmatch(message_id):
        return None
    part, tag = message_id[len(PREFIX):len(PREFIX) + SIGNED_DIGITS], message_id[len(PREFIX) + SIGNED_DIGITS:]
    if not any(hmac.compare_digest(tag, _tag(key, tenant, part)) for key in keys):
        return None
    return EPOCH + timedelta(hours=int(part[:HOUR_DIGITS], 16))


def issued(keys: Sequence[Secret], tenant: str, message_id: str) -> bool:
    """Whether `message_id` is one this bridge gave a send of `tenant` (never without a key)."""
    return issued_at(keys, tenant, message_id) is not None
