"""Delivery-receipt classification (flowroute-api.md §6.4–§6.5): code first, wording as fallback."""

from __future__ import annotations

from typing import NamedTuple

from smsbridge.events import DeliveryState

INTERMEDIATE = {1000: "sent", 1001: "sent", 1002: "sent", 1003: "buffered"}
DELIVERED = 1004

REG = "check the sender number's 10DLC campaign registration (or toll-free verification) in Flowroute"
FAILURE_REASONS: dict[int, tuple[str, str]] = {
    1005: ("rejected", "the carrier rejected the message"),
    1006: ("expired", "the message expired before it could be delivered"),
    1007: ("failed", "the carrier reported the message failed"),
    1008: ("failed", "permanent send error at the carrier"),
    1009: ("partial", "part of a multi-part message failed"),
    1101: ("carrier_invalid", "source carrier invalid"),
    1102: ("carrier_invalid", "destination carrier invalid"),
    1103: ("not_registered", f"sender not authorised: {REG}"),
    1104: ("carrier_disabled", "source carrier disabled"),
    1105: ("carrier_disabled", "destination carrier disabled"),
    1106: ("no_route", "no valid route to the destination"),
    1109: ("route_denied", f"route denied by the carrier: {REG}"),
    1110: ("opted_out", "recipient opted out (STOP)"),
    1111: ("temporary", "temporary resolution failure: a later re-send may succeed"),
    1112: ("unresolvable", "permanent resolution failure: the number cannot be reached"),
    1116: ("not_text_enabled", "destination is not text-enabled (a landline?)"),
    1150: ("spam", f"blocked as spam: review the content and {REG}"),
    1152: ("spam", f"rejected as spam: review the content and {REG}"),
    1204: ("carrier_error", "carrier system error: a later re-send may succeed"),
    1210: ("carrier_busy", "carrier queue full: a later re-send may succeed"),
}
FAILURE_WORDS = ("fail", "reject", "undeliv", "expired", "error")


class DlrOutcome(NamedTuple):
    state: DeliveryState
    reason_code: str | None
    reason: str | None


def classify_dlr(level: int | None, status: str, code: int | None) -> DlrOutcome:
    """Map one DLR to a status: `sent`, `buffered`, `delivered` or `failed` with a reason."""
    wording = status.lower()
    if code == DELIVERED or (code is None and wording == "delivered"):
        return DlrOutcome("delivered", None, None)
    if code in INTERMEDIATE:
        return DlrOutcome(INTERMEDIATE[code], None, None)  # type: ignore[arg-type]
    if code is not None and code in FAILURE_REASONS:
        short, text = FAILURE_REASONS[code]
        return DlrOutcome("failed", short, f"{text} (DLR {code})")
    if code is not None and code >= 1005:
        return DlrOutcome("failed", "carrier_error", f"carrier reported error {code} ({status or 'no detail'})")
    if any(word in wording for word in FAILURE_WORDS):
        return DlrOutcome("failed", "carrier_error", f"carrier reported: {status}")
    return DlrOutcome("buffered" if wording == "message buffered" else "sent", None, None)
