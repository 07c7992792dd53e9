"""Phone numbers as Flowroute sends and takes them.

Webhooks deliver 11-digit NANP numbers without `+` (sometimes 10 digits); our canonical form
is E.164 with `+`. Everything here is a pure function.
"""

from __future__ import annotations

import re

from smsbridge.errors import InvalidNumber
from smsbridge.redact import mask

__all__ = ["flowroute_format", "mask", "sender_e164", "to_e164"]

_NON_DIGITS = re.compile(r"[\s().\-]")


def to_e164(raw: str) -> str:
    """Normalise a NANP number to `+1NPANXXXXXX`, or raise `InvalidNumber` saying why."""
    cleaned = raw.strip()
    if not cleaned.isdigit():  # as Flowroute sends them, there is nothing to clean
        cleaned = _NON_DIGITS.sub("", cleaned)
    digits = cleaned.removeprefix("+")
    if not (digits.isascii() and digits.isdigit()):  # isdigit alone takes other scripts' digits
        raise InvalidNumber(raw, "contains characters other than digits")
    if len(digits) == 10:
        digits = "1" + digits
    if len(digits) != 11 or digits[0] != "1":
        raise InvalidNumber(raw, "is not a 10- or 11-digit North American number")
    if digits[1] in "01" or digits[4] in "01":  # NPA-NXX-XXXX: N is 2-9
        raise InvalidNumber(raw, "area code and exchange must not start with 0 or 1")
    return "+" + digits


def sender_e164(raw: str) -> str:
    """Best-effort normalisation of an inbound sender, which may be a short code.

    Senders are never refused: a short code or an odd format is kept as its digits.
    """
    try:
        return to_e164(raw)
    except InvalidNumber:
        cleaned = _NON_DIGITS.sub("", raw.strip())
        return cleaned or raw


def flowroute_format(e164: str) -> str:
    """The form we send to Flowroute v2.2: E.164 with `+` (accepted per the v2.2 docs)."""
    return to_e164(e164)
