"""Delivery-receipt classification (flowroute-api.md §6.4–§6.5): code first, wording as fallback.

`CODES` holds every code of Flowroute's "Delivery Receipt Response Codes" page with its label
there, the state we give it and, for failures, a reason a person can act on. A code not in
the table keeps Flowroute's own description (`status_code_description`). `docs/flowroute-codes.md`
is generated from this table (`python -m smsbridge.flowroute.codes_doc`).
"""

from __future__ import annotations

from typing import NamedTuple

from smsbridge.events import DeliveryState


class Code(NamedTuple):
    label: str  # Flowroute's wording on its code page
    state: DeliveryState
    reason_code: str | None = None
    reason: str | None = None


REG = "check the sender number's 10DLC campaign registration (or toll-free verification) in Flowroute"
SUPPORT = "contact Flowroute support with the message id"
LATER = "a later re-send may succeed"


def _failed(label: str, reason_code: str, reason: str) -> Code:
    return Code(label, "failed", reason_code, reason)


def _gateway(label: str, what: str) -> Code:
    """SMPP fields the bridge has no say in: only Flowroute can say why its gateway complained."""
    return _failed(label, "carrier_error", f"the carrier gateway refused {what}: {SUPPORT}")


def _bad_sender(label: str, what: str) -> Code:
    return _failed(label, "invalid_sender", f"the carrier refused the sender number's {what}: check the DID is a US "
                                            "or Canadian long code or toll-free number enabled for messaging")


def _bad_destination(label: str, what: str) -> Code:
    return _failed(label, "invalid_destination", f"the carrier refused the destination number's {what}: check the "
                                                 "number is a US or Canadian mobile number")


CODES: dict[int, Code] = {
    1000: Code("Default State", "sent"),
    1001: Code("Message queued for delivery", "sent"),
    1002: Code("Message has been sent", "sent"),
    1003: Code("Message accepted by Carrier", "buffered"),
    1004: Code("Message delivered to handset", "delivered"),
    1005: _failed("Message rejected", "rejected",
                  f"the carrier rejected the message: check the number can receive texts, else {SUPPORT}"),
    1006: _failed("Message expired", "expired",
                  "the message expired before the handset could take it (off or out of coverage): send again later"),
    1007: _failed("Message failed", "failed",
                  "the carrier reported the message failed: check the number and send again; if it repeats, "
                  f"{SUPPORT}"),
    1008: _failed("Permanent Send Error", "failed", f"permanent send error at the carrier: do not resend unchanged; "
                                                    f"{SUPPORT}"),
    1009: _failed("PARTIAL_SEND_FAILURE", "partial",
                  "part of a multi-part message failed: the recipient may have an incomplete text; send it again, "
                  "shorter if possible"),
    1100: _failed("Unknown error", "carrier_error",
                  f"the carrier gave no reason: send again later; if it repeats, {SUPPORT}"),
    1101: _failed("Source Carrier Invalid", "carrier_invalid",
                  "the sender number's carrier cannot text: check the DID is enabled for messaging in Flowroute"),
    1102: _failed("Destination Carrier Invalid", "carrier_invalid",
                  "the destination's carrier cannot take texts: check the number is a mobile number"),
    1103: _failed("Source Not Authorized", "not_registered", f"sender not authorised: {REG}"),
    1104: _failed("Source Carrier Disabled", "carrier_disabled",
                  f"texting is disabled at the sender number's carrier: {SUPPORT}"),
    1105: _failed("Destination Carrier Disabled", "carrier_disabled",
                  "the destination's carrier has texting from Flowroute disabled: this recipient cannot be texted "
                  "from this number"),
    1106: _failed("No Valid Route", "no_route",
                  f"no valid route to the destination: check the number; if it is right, {SUPPORT}"),
    1107: _bad_sender("Invalid Source TON", "type of number"),
    1108: _bad_destination("Invalid Destination TON", "type of number"),
    1109: _failed("Route Denied", "route_denied", f"route denied by the carrier: {REG}"),
    1110: _failed("User Opted Out (STOP)", "opted_out",
                  "recipient opted out (STOP): they must text UNSTOP before you can text them again"),
    1111: _failed("Temporary Resolution Failure", "temporary", f"temporary resolution failure: {LATER}"),
    1112: _failed("Permanent Resolution Failure", "unresolvable",
                  "permanent resolution failure: the number cannot be reached (disconnected or mistyped?)"),
    1115: _failed("No Handler found", "no_route",
                  f"no carrier handles the destination (ported or disconnected?): check the number, else {SUPPORT}"),
    1116: _failed("Destination Address is not text enabled", "not_text_enabled",
                  "destination is not text-enabled (a landline?): text a mobile number instead"),
    1150: _failed("Spam", "spam", f"blocked as spam: review the content and {REG}"),
    1152: _failed("Spam Reject", "spam", f"rejected as spam: review the content and {REG}"),
    1200: _failed("Unknown error", "carrier_error",
                  f"unknown error at the carrier gateway: send again later; if it repeats, {SUPPORT}"),
    1201: _failed("Message too long", "too_long", "the carrier refused the message as too long: send it shorter"),
    1202: _gateway("Invalid priority flag", "the priority flag (the bridge sets none)"),
    1203: _gateway("Invalid registered-delivery flag", "the delivery-receipt flag (the bridge sets none)"),
    1204: _failed("System error", "carrier_error", f"carrier system error: {LATER}"),
    1205: _bad_sender("Invalid source address", "address"),
    1206: _bad_destination("Invalid destination address", "address"),
    1207: _gateway("Invalid message id", "the message id"),
    1208: _gateway("Cancel failed", "a cancel request (the bridge sends none)"),
    1209: _gateway("Replace failed", "a replace request (the bridge sends none)"),
    1210: _failed("Message queue full", "carrier_busy", f"carrier queue full: {LATER}"),
    1211: _gateway("Invalid service type", "the service type (the bridge sets none)"),
    1212: _gateway("Invalid number of destinations", "the number of destinations (the bridge sends one)"),
    1213: _gateway("Invalid distribution list", "a distribution list (the bridge uses none)"),
    1214: _gateway("Invalid destination flag", "the destination flag (the bridge sets none)"),
    1215: _gateway("Invalid submit-with-replace", "a submit-with-replace (the bridge sends none)"),
    1216: _gateway("Invalid esm class", "the ESM class (the bridge sets none)"),
    1217: _gateway("Invalid submit to distribution list", "a submit to a distribution list (the bridge sends none)"),
    1218: _failed("Submitting failed", "carrier_error",
                  f"the carrier gateway could not take the message: send again later; if it repeats, {SUPPORT}"),
    1219: _bad_sender("Invalid source TON", "type of number"),
    1220: _bad_sender("Invalid source NPI", "numbering plan"),
    1221: _bad_destination("Invalid destination TON", "type of number"),
    # The stored copy of Flowroute's page breaks off at "invalid destination …"; the SMPP error
    # list the 12xx codes follow in order (1200 unknown … 1221 destination TON) ends with NPI.
    1222: _bad_destination("Invalid destination NPI", "numbering plan"),
}
FAILURE_WORDS = ("fail", "reject", "undeliv", "expired", "error")


class DlrOutcome(NamedTuple):
    state: DeliveryState
    reason_code: str | None
    reason: str | None


def classify_dlr(level: int | None, status: str, code: int | None, description: str | None = None) -> DlrOutcome:
    """Map one DLR to a status: `sent`, `buffered`, `delivered` or `failed` with a reason."""
    wording = status.lower()
    if code is None and wording == "delivered":
        return DlrOutcome("delivered", None, None)
    known = CODES.get(code) if code is not None else None
    if known is not None:
        reason = None if known.reason is None else f"{known.reason} (DLR {code})"
        return DlrOutcome(known.state, known.reason_code, reason)
    said = (description or "").strip() or status or "no detail"
    if code is not None and code >= 1005:
        return DlrOutcome("failed", "carrier_error", f"carrier reported error {code}: {said}")
    if any(word in wording for word in FAILURE_WORDS):
        return DlrOutcome("failed", "carrier_error", f"carrier reported: {status}" + (
            f" ({description.strip()})" if description and description.strip() else ""))
    return DlrOutcome("buffered" if wording == "message buffered" else "sent", None, None)
