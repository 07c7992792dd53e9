from __future__ import annotations

import pytest

from smsbridge.flowroute.dlr import classify_dlr


@pytest.mark.parametrize(
    ("level", "status", "code", "state"),
    [(1, "smsc submit", None, "sent"), (2, "message buffered", 1003, "buffered"), (2, "delivered", 1004, "delivered"),
     (None, "delivered", None, "delivered"), (2, "", 1001, "sent"), (None, "message buffered", None, "buffered")],
)
def test_progress_states(level: int | None, status: str, code: int | None, state: str) -> None:
    assert classify_dlr(level, status, code).state == state


def test_opt_out_reason_is_plain() -> None:
    outcome = classify_dlr(2, "delivery failed", 1110)
    assert outcome.state == "failed" and outcome.reason_code == "opted_out"
    assert outcome.reason == "recipient opted out (STOP) (DLR 1110)"


@pytest.mark.parametrize("code", [1103, 1109, 1150, 1152])
def test_registration_failures_tell_the_operator_about_10dlc(code: int) -> None:
    outcome = classify_dlr(2, "", code)
    assert outcome.state == "failed" and "10DLC" in (outcome.reason or "")


def test_unknown_failure_code_is_still_a_failure() -> None:
    outcome = classify_dlr(2, "whatever", 1299)
    assert outcome.state == "failed" and "1299" in (outcome.reason or "")


def test_failure_wording_without_code_is_a_failure() -> None:
    # Open question (flowroute-api.md §13.7): failure wording is unconfirmed; match defensively.
    assert classify_dlr(2, "smsc reject", None).state == "failed"
    assert classify_dlr(2, "delivery failed", None).state == "failed"
