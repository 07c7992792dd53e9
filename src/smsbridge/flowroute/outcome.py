"""What a Flowroute send answer means (flowroute-api.md §3), as a pure function."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from smsbridge.backoff import retry_after_seconds

OPTED_OUT_CODE = 1110
_OPTED_OUT = re.compile(r"(?<!\d)1110(?!\d)")
REGISTRATION_HINT = ("the sender number must be on this Flowroute account, enabled for messaging, and assigned to a "
                     "registered 10DLC campaign (or verified, for toll-free)")


class Accepted(msgspec.Struct, frozen=True):
    mdr_id: str | None
    segments: int | None = None


class RateLimited(msgspec.Struct, frozen=True):
    retry_after: float


class Retry(msgspec.Struct, frozen=True):
    reason: str
    retry_after: float | None = None
    maybe_sent: bool = False  # no answer: Flowroute may have taken it, look before resending


class Fail(msgspec.Struct, frozen=True):
    code: str
    reason: str


Outcome = Accepted | RateLimited | Retry | Fail


def _errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def error_detail(body: Any) -> str:
    """Flowroute's own words: `title: detail` of each error (title may be missing, detail may be an object)."""
    parts = []
    for error in _errors(body):
        detail = error.get("detail")
        text = detail if isinstance(detail, str) else (msgspec.json.encode(detail).decode() if detail else "")
        parts.append(": ".join(p for p in (str(error.get("title") or ""), text) if p))
    return "; ".join(p for p in parts if p) or "no detail given"


def _opted_out(body: Any) -> bool:
    """1110 anywhere in any error: Flowroute says "400 with error code 1110" without naming the
    field, and its documented error object (id, status, title, detail) has no `code`. `id` is a
    random request id, where 1110 would be chance, so it is not read."""
    for error in _errors(body):
        fields = {key: value for key, value in error.items() if key != "id"}
        if _OPTED_OUT.search(msgspec.json.encode(fields).decode()):
            return True
    return False


def _segments(data: Mapping[str, Any]) -> int | None:
    # price_details nesting is an open question (§13.9): look in both places.
    attributes = data.get("attributes") if isinstance(data.get("attributes"), dict) else {}
    for holder in (data, attributes):
        details = holder.get("price_details") if isinstance(holder, dict) else None
        if isinstance(details, dict) and isinstance(details.get("segment_count"), int):
            return int(details["segment_count"])
    return None


def classify_send(status: int, body: Any, headers: Mapping[str, str], *, from_number: str = "",
                  rand: Any = random.random) -> Outcome:
    if 200 <= status <= 208:
        return _accepted(body)
    if _opted_out(body):  # whatever the status: a 403 saying 1110 is still an opt-out
        return Fail("opted_out", "recipient opted out (STOP): they must text UNSTOP before you can text them again")
    if status == 429:
        asked = retry_after_seconds(headers.get("Retry-After"))
        return RateLimited(asked if asked is not None else 1.0 + rand())
    if status >= 500 or status == 408:
        return Retry(f"Flowroute answered {status}: {error_detail(body)}",
                     retry_after_seconds(headers.get("Retry-After")))
    return _client_error(status, body, from_number)


def _accepted(body: Any) -> Accepted:
    data = body.get("data") if isinstance(body, dict) else None
    data = data if isinstance(data, dict) else {}
    mdr_id = data.get("id") if isinstance(data.get("id"), str) else None
    return Accepted(mdr_id, _segments(data))


def _client_error(status: int, body: Any, from_number: str) -> Fail:
    detail = error_detail(body)
    if status == 401:
        return Fail("credentials", "Flowroute rejected the Access Key / Secret Key (401): check the SMS "
                                   f"configuration's credentials ({detail})")
    if status == 403:
        return Fail("not_permitted", f"Flowroute refused to send from {from_number or 'this number'} (403): "
                                     f"{REGISTRATION_HINT} ({detail})")
    if status == 422:
        return Fail("invalid", f"Flowroute could not accept the message (422): {detail}")
    return Fail(f"flowroute_{status}", f"Flowroute refused the message ({status}): {detail}")
