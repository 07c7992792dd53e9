"""Splitting texts for SIP MESSAGE: byte budgets, numbered parts, never inside a grapheme."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsbridge.sip.split import MIN_BUDGET, split_text

PREFIX = re.compile(r"^\((\d+)/(\d+)\) ")


def unnumbered(parts: list[str]) -> str:
    return "".join(PREFIX.sub("", p) for p in parts)


def test_a_text_that_fits_is_sent_as_it_is() -> None:
    assert split_text("Hello 👋", 100) == ["Hello 👋"]


def test_parts_are_numbered_and_fit_the_budget_in_bytes() -> None:
    text = "Привет мир " * 100  # 2 bytes a letter: a character count would overflow the budget
    parts = split_text(text, 200)
    assert all(len(p.encode()) <= 200 for p in parts)
    assert [PREFIX.match(p).groups() for p in parts] == [(str(i), str(len(parts))) for i in range(1, len(parts) + 1)]
    assert unnumbered(parts) == text


@pytest.mark.parametrize("cluster", ["👨‍👩‍👧‍👦", "🇫🇷", "👍🏽", "e\u0301", "क्षि"])
def test_a_cut_never_falls_inside_a_grapheme(cluster: str) -> None:
    text = ("ab" + cluster) * 80
    for budget in range(48, 90):  # room for "(nn/nn) " and the largest cluster (25 bytes)
        for part in split_text(text, budget):
            body = PREFIX.sub("", part)
            assert set(body.replace(cluster, "")) <= {"a", "b"}, (budget, part)  # no piece of the cluster left


def test_a_word_is_not_cut_when_a_space_is_near() -> None:
    parts = split_text("alpha beta gamma delta epsilon zeta eta theta iota kappa", 40)
    assert all(PREFIX.sub("", p).endswith(" ") for p in parts[:-1])


def test_a_budget_too_small_for_a_numbered_part_is_refused() -> None:
    with pytest.raises(ValueError):
        split_text("x" * 100, MIN_BUDGET - 1)


def test_part_numbers_growing_to_two_digits_still_fit() -> None:
    parts = split_text("y" * 2000, 40)
    assert len(parts) >= 10
    assert all(len(p.encode()) <= 40 for p in parts)


@given(st.text(min_size=1, max_size=600), st.integers(min_value=MIN_BUDGET, max_value=300))
def test_any_text_reassembles_and_fits(text: str, budget: int) -> None:
    parts = split_text(text, budget)
    assert unnumbered(parts) == text if len(parts) > 1 else parts == [text]
    assert all(len(p.encode()) <= budget for p in parts)
