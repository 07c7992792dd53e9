"""The ids the relay API gives its sends, and how the bridge tells its own from made-up ones.

An id is shaped like Flowroute's (`mdr2-` and 32 hex digits). With `[relay] id_key` set, its
last 12 digits are an HMAC-SHA256 tag over the tenant and the first 20 (80 random bits): a
receiver can then answer `GET /v2.2/messages/{id}` for a send it accepted before any row of it
exists (a send without an `Idempotency-Key` gets its row from the outbound stage), while an id
someone made up, or another tenant's, still finds nothing. 48 bits of tag make a guess that
passes one in 2^48; 80 random bits make two equal ids as unlikely as two uuid4s in a day's sends.
Nothing is looked up to check an id.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re

from smsbridge.secret import Secret

PREFIX = "mdr2-"
SHAPE = re.compile(r"mdr2-[0-9a-f]{32}")
RANDOM_DIGITS = 20
TAG_BYTES = 6  # 12 hex digits


def _tag(key: Secret, tenant: str, part: str) -> str:
    message = f"{tenant}\x00{part}".encode()
    return hmac.digest(key.reveal().encode(), message, hashlib.sha256)[:TAG_BYTES].hex()


def new_id(key: Secret | None, tenant: str) -> str:
    """A fresh id for a send of `tenant`: signed when there is a key, else 128 random bits."""
    if key is None:
        return f"{PREFIX}{random.getrandbits(128):032x}"
    part = f"{random.getrandbits(4 * RANDOM_DIGITS):0{RANDOM_DIGITS}x}"
    return f"{PREFIX}{part}{_tag(key, tenant, part)}"


def issued(key: Secret | None, tenant: str, message_id: str) -> bool:
    """Whether `message_id` is one this bridge gave a send of `tenant` (never without a key)."""
    if key is None or not SHAPE.fullmatch(message_id):
        return False
    part, tag = message_id[len(PREFIX):len(PREFIX) + RANDOM_DIGITS], message_id[len(PREFIX) + RANDOM_DIGITS:]
    return hmac.compare_digest(tag, _tag(key, tenant, part))
