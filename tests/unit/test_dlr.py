from __future__ import annotations

import pytest

from smsbridge.events import DeliveryReceipt
from smsbridge.flowroute.dlr import CODES, classify_dlr
from smsbridge.workers.inbound import dlr_key

# Flowroute's "Delivery Receipt Response Codes" page (flowroute-api.md §6.5): 50 codes.
DOCUMENTED = [*range(1000, 1010), *range(1100, 1113), 1115, 1116, 1150, 1152, *range(1200, 1223)]


@pytest.mark.parametrize(
    ("level", "status", "code", "state"),
    [(1, "smsc submit", None, "sent"), (2, "message buffered", 1003, "buffered"), (2, "delivered", 1004, "delivered"),
     (None, "delivered", None, "delivered"), (2, "", 1001, "sent"), (None, "message buffered", None, "buffered")],
)
def test_progress_states(level: int | None, status: str, code: int | None, state: str) -> None:
    assert classify_dlr(level, status, code).state == state


def test_the_table_holds_every_documented_code_and_no_other() -> None:
    assert len(DOCUMENTED) == 50 and sorted(CODES) == DOCUMENTED


@pytest.mark.parametrize("code", [c for c in DOCUMENTED if c >= 1005])
def test_every_documented_failure_has_its_own_actionable_reason(code: int) -> None:
    """No documented code falls back to "carrier reported error N": each says what to do."""
    outcome = classify_dlr(2, "delivery failed", code, "whatever Flowroute says")
    assert outcome.state == "failed" and outcome.reason_code not in (None, "")
    assert outcome.reason and outcome.reason.endswith(f"(DLR {code})")
    assert "carrier reported error" not in outcome.reason and "whatever Flowroute says" not in outcome.reason
    assert ":" in outcome.reason  # what happened: what to do


@pytest.mark.parametrize(
    ("code", "reason_code", "reason"),
    [(1100, "carrier_error", "the carrier gave no reason: send again later; if it repeats, contact Flowroute "
                             "support with the message id (DLR 1100)"),
     (1107, "invalid_sender", "the carrier refused the sender number's type of number: check the DID is a US or "
                              "Canadian long code or toll-free number enabled for messaging (DLR 1107)"),
     (1115, "no_route", "no carrier handles the destination (ported or disconnected?): check the number, else "
                        "contact Flowroute support with the message id (DLR 1115)"),
     (1201, "too_long", "the carrier refused the message as too long: send it shorter (DLR 1201)"),
     (1206, "invalid_destination", "the carrier refused the destination number's address: check the number is a "
                                   "US or Canadian mobile number (DLR 1206)"),
     (1216, "carrier_error", "the carrier gateway refused the ESM class (the bridge sets none): contact Flowroute "
                             "support with the message id (DLR 1216)")],
)
def test_formerly_generic_codes_now_say_what_to_do(code: int, reason_code: str, reason: str) -> None:
    assert classify_dlr(2, "delivery failed", code) == ("failed", reason_code, reason)


def test_opt_out_reason_is_plain() -> None:
    outcome = classify_dlr(2, "delivery failed", 1110)
    assert outcome.state == "failed" and outcome.reason_code == "opted_out"
    assert outcome.reason == ("recipient opted out (STOP): they must text UNSTOP before you can text them again "
                              "(DLR 1110)")


@pytest.mark.parametrize("code", [1103, 1109, 1150, 1152])
def test_registration_failures_tell_the_operator_about_10dlc(code: int) -> None:
    outcome = classify_dlr(2, "", code)
    assert outcome.state == "failed" and "10DLC" in (outcome.reason or "")


def test_unknown_failure_code_keeps_flowroutes_description() -> None:
    outcome = classify_dlr(2, "whatever", 1299, "Carrier blocked the sender")
    assert outcome == ("failed", "carrier_error", "carrier reported error 1299: Carrier blocked the sender")
    assert classify_dlr(2, "whatever", 1299).reason == "carrier reported error 1299: whatever"


def test_failure_wording_without_code_is_a_failure() -> None:
    # Open question (flowroute-api.md §13.7): failure wording is unconfirmed; match defensively.
    assert classify_dlr(2, "smsc reject", None).state == "failed"
    assert classify_dlr(2, "delivery failed", None, "Handset rejected").reason == \
        "carrier reported: delivery failed (Handset rejected)"


def test_a_receipts_dedupe_key_is_its_configurations_whatever_the_id() -> None:
    """Another configuration's webhook posting the same receipt (the same id, a replay) must not
    pass for this one's resend: the key starts with the configuration, whose id has no `|`
    (`config.Ident`), so no id, however long or whatever it holds, makes one configuration's key
    another's, even cut to the column's 255 characters."""
    acme = DeliveryReceipt(tenant="acme", config_id="main", mdr_id="mdr2-x", level=2, status="delivered",
                           status_code=1004)
    beta = DeliveryReceipt(tenant="beta", config_id="beta-main", mdr_id="mdr2-x", level=2, status="delivered",
                           status_code=1004)
    assert dlr_key(acme) != dlr_key(beta)
    forged = DeliveryReceipt(tenant="acme", config_id="beta", mdr_id="main|mdr2-x" + "|" * 300, level=2)
    assert dlr_key(forged)[:255].split("|", 1)[0] == "beta" and dlr_key(acme).split("|", 1)[0] == "main"
