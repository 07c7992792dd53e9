from __future__ import annotations

import pytest

from smsbridge.errors import InvalidNumber
from smsbridge.numbers import flowroute_format, is_us_ca, mask, sender_e164, to_e164, us_ca_e164


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


@pytest.mark.parametrize(
    ("raw", "e164"),
    [(16085612999, "+16085612999"), (6085612999, "+16085612999"), ("447911123456", "+447911123456"),
     ("+447911123456", "+447911123456"), (447911123456, "+447911123456"), ("33612345678", "+33612345678"),
     ("72345", "72345"), ("898211", "898211"), ("1065550100", "1065550100")],
)
def test_senders_become_e164_whatever_their_form(raw: str | int, e164: str) -> None:
    """A JSON number (the 2022 capture's `"to": 16085612999`) and international senders get the
    same `+` form as NANP ones; short codes have no E.164 form and keep their digits."""
    assert sender_e164(raw) == e164


def test_a_json_number_is_a_number() -> None:
    assert to_e164(16085612999) == "+16085612999"


@pytest.mark.parametrize(
    ("raw", "country"),
    [("+18765550100", "Jamaica"), ("18095550100", "the Dominican Republic"), ("+14415550100", "Bermuda"),
     ("+12425550100", "the Bahamas")],
)
def test_nanp_numbers_outside_the_us_and_canada_are_refused(raw: str, country: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        us_ca_e164(raw)
    assert f"is in {country}: Flowroute sends only to the US and Canada" in info.value.reason


@pytest.mark.parametrize("raw", ["+12065550100", "+14165550100", "+17875550100", "+16715550100", "+18005550100"])
def test_us_canada_territories_and_toll_free_are_destinations(raw: str) -> None:
    """The docs say "US/Canada" and are silent on US territories (Puerto Rico 787, Guam 671, ...):
    we chose to treat them as the US. Toll-free (8XX) numbers are US/Canada numbers."""
    assert us_ca_e164(raw) == raw


def test_non_nanp_destinations_are_refused() -> None:
    with pytest.raises(InvalidNumber, match="not a 10- or 11-digit North American number"):
        us_ca_e164("+447911123456")


def test_flowroute_gets_eleven_digits_without_plus() -> None:
    assert flowroute_format("+12065550100") == "12065550100"
    assert is_us_ca("+12065550100") and not is_us_ca("+18765550100") and not is_us_ca("+447911123456")
