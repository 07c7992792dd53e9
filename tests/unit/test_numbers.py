from __future__ import annotations

import pytest

from smsbridge.errors import InvalidNumber
from smsbridge.numbers import mask, sender_e164, to_e164


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("12065550100", "+12065550100"), ("2065550100", "+12065550100"), ("+12065550100", "+12065550100"),
     ("(206) 555-0100", "+12065550100"), ("+1 206.555.0100", "+12065550100"), (" 12065550100\n", "+12065550100"),
     ("+1 (206) 555-0100", "+12065550100")],
)
def test_nanp_forms_normalise(raw: str, e164: str) -> None:
    assert to_e164(raw) == e164


@pytest.mark.parametrize(
    ("raw", "why"),
    [("+442071234567", "not a 10- or 11-digit"), ("206555010", "not a 10- or 11-digit"),
     ("1206555010a", "characters other than digits"), ("11065550100", "must not start with 0 or 1"),
     ("12061550100", "must not start with 0 or 1"), ("10065550100", "must not start with 0 or 1"),
     ("12060550100", "must not start with 0 or 1"), ("+1+2065550100", "characters other than digits"),
     ("1206555\u0660\u0661\u0660\u0660", "characters other than digits")],  # Arabic-Indic digits
)
def test_invalid_numbers_say_why(raw: str, why: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        to_e164(raw)
    assert why in info.value.reason and raw in info.value.reason


def test_senders_are_never_refused() -> None:
    assert sender_e164("12065550199") == "+12065550199"
    assert sender_e164("72345") == "72345"


def test_mask_keeps_only_the_last_four_digits() -> None:
    assert mask("+12065550199") == "+1******0199"
    assert mask("123") == "***"
