"""Phone numbers as Flowroute sends and takes them.

Webhooks deliver 11-digit NANP numbers without `+` (sometimes 10 digits, once a JSON number);
inside the bridge every number is E.164 with `+`; Flowroute is sent the 11-digit form. Flowroute
sends only to the US and Canada (flowroute-api.md §2.1). Everything here is a pure function.
"""

from __future__ import annotations

import re

from smsbridge.errors import InvalidNumber
from smsbridge.redact import mask

__all__ = ["flowroute_format", "foreign_country", "is_us_ca", "mask", "sender_e164", "to_e164", "us_ca_e164"]

_NON_DIGITS = re.compile(r"[\s().\-]")

# NANP area codes of countries other than the US and Canada: Flowroute cannot send there.
# US territories (787/939 Puerto Rico, 340, 670, 671, 684) are the US and stay allowed.
FOREIGN_NANP: dict[str, str] = {
    "242": "the Bahamas", "246": "Barbados", "264": "Anguilla", "268": "Antigua and Barbuda",
    "284": "the British Virgin Islands", "345": "the Cayman Islands", "441": "Bermuda", "473": "Grenada",
    "649": "the Turks and Caicos Islands", "658": "Jamaica", "664": "Montserrat", "721": "Sint Maarten",
    "758": "Saint Lucia", "767": "Dominica", "784": "Saint Vincent and the Grenadines",
    "809": "the Dominican Republic", "829": "the Dominican Republic", "849": "the Dominican Republic",
    "868": "Trinidad and Tobago", "869": "Saint Kitts and Nevis", "876": "Jamaica",
}


def _digits(raw: str | int) -> str:
    """The number's digits (a leading `+` dropped); punctuation people type is removed."""
    cleaned = str(raw).strip()
    if not cleaned.isdigit():  # as Flowroute sends them, there is nothing to clean
        cleaned = _NON_DIGITS.sub("", cleaned)
    return cleaned.removeprefix("+")


def to_e164(raw: str | int) -> str:
    """Normalise a NANP number to `+1NPANXXXXXX`, or raise `InvalidNumber` saying why."""
    digits = _digits(raw)
    if not (digits.isascii() and digits.isdigit()):  # isdigit alone takes other scripts' digits
        raise InvalidNumber(str(raw), "contains characters other than digits")
    if len(digits) == 10:
        digits = "1" + digits
    if len(digits) != 11 or digits[0] != "1":
        raise InvalidNumber(str(raw), "is not a 10- or 11-digit North American number")
    if digits[1] in "01" or digits[4] in "01":  # NPA-NXX-XXXX: N is 2-9
        raise InvalidNumber(str(raw), "area code and exchange must not start with 0 or 1")
    return "+" + digits


def us_ca_e164(raw: str | int) -> str:
    """A destination Flowroute can send to: a US or Canadian number, as E.164."""
    number = to_e164(raw)
    country = foreign_country(number)
    if country is not None:
        raise InvalidNumber(str(raw), f"is in {country}: Flowroute sends only to the US and Canada")
    return number


def foreign_country(e164: str) -> str | None:
    """The country of a NANP number outside the US and Canada (`+1876…` → Jamaica), else None."""
    return FOREIGN_NANP.get(e164[2:5]) if e164.startswith("+1") and len(e164) == 12 else None


def sender_e164(raw: str | int) -> str:
    """Best-effort E.164 for an inbound sender, which may be international or a short code.

    Senders are never refused: NANP numbers get `+1`, other numbers of 7 to 15 digits (E.164's
    range outside NANP) get `+`, short codes and odd formats are kept as their digits.
    """
    try:
        return to_e164(raw)
    except InvalidNumber:
        digits = _digits(raw)
        # A leading 1 is NANP's country code: such a number that failed above is not E.164.
        if digits.isascii() and digits.isdigit() and 7 <= len(digits) <= 15 and digits[0] not in "01":
            return "+" + digits
        return digits or str(raw)


def flowroute_format(e164: str) -> str:
    """The form we send to Flowroute: 11 digits, no `+` (`12065550100`), which every version of
    its docs accepts and every known client sends (only v2.2's SMS page shows a `+`)."""
    return e164.removeprefix("+")


def is_us_ca(number: str) -> bool:
    """Whether Flowroute can send to this number (E.164 or any form `to_e164` reads)."""
    try:
        us_ca_e164(number)
    except InvalidNumber:
        return False
    return True

