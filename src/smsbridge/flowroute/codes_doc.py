"""Render docs/flowroute-codes.md from the code's own tables:
`python -m smsbridge.flowroute.codes_doc > docs/flowroute-codes.md`.

Each row is what `classify_send` or `classify_dlr` really returns for that answer or code, so
the page cannot drift from the code (a test regenerates it and compares).
"""

from __future__ import annotations

from typing import Any

from smsbridge.flowroute.dlr import CODES, classify_dlr
from smsbridge.flowroute.outcome import Accepted, Fail, Outcome, RateLimited, Retry, classify_send
from smsbridge.flowroute.payloads import error_body

INTRO = """# Flowroute answers and delivery-receipt codes → what the PBX gets

Generated from `src/smsbridge/flowroute/outcome.py` and `src/smsbridge/flowroute/dlr.py` by
`python -m smsbridge.flowroute.codes_doc`; do not edit by hand. The PBX sees these as `status`
events (docs/contracts.md): `state`, `reason_code` (for programs) and `reason` (for people).
Sources: shared `flowroute-api.md` §3 (errors) and §6.5 (Flowroute's "Delivery Receipt Response
Codes" page). Before any of this, the bridge itself refuses what Flowroute cannot send (for
example `destination_not_us_ca` for +1 876…, `invalid_number`): no attempt is made.
"""

# (what Flowroute answered, HTTP status, body): bodies in Flowroute's documented error shape.
SEND_CASES: list[tuple[str, int, Any]] = [
    ("202 Accepted", 202, {"data": {"id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d", "type": "message"}}),
    ("any error that says 1110 in any field (title, detail, …), whatever the status", 403,
     error_body(403, "1110", "")),
    ("400 Bad Request", 400, error_body(400, "Bad Request", "<Flowroute's detail>")),
    ("401 Unauthorized", 401, error_body(401, "Unauthorized", "Authentication failed.")),
    ("403 Forbidden", 403, error_body(403, "ActionNotAuthorizedError", "")),
    ("404 Not Found", 404, error_body(404, "Not Found", "<Flowroute's detail>")),
    ("405 Method Not Allowed", 405, error_body(405, "Method Not Allowed", "<Flowroute's detail>")),
    ("415 Unsupported Media Type", 415, error_body(415, "Unsupported Media Type", "<Flowroute's detail>")),
    ("422 Unprocessable Entity", 422, error_body(422, "Unprocessable Entity", "<Flowroute's detail>")),
    ("429 Too Many Requests", 429, error_body(429, "Too Many Requests", "")),
    ("500 Internal Server Error", 500, error_body(500, "Internal Server Error", "<Flowroute's detail>")),
    ("503 Service Unavailable", 503, error_body(503, "Service Unavailable", "<Flowroute's detail>")),
]
RETRIED = ("none yet: retried with backoff; if the retry policy gives up, `failed` with reason_code "
           "`exhausted`")


def _send_row(answer: str, outcome: Outcome) -> str:
    if isinstance(outcome, Accepted):
        return f"| {answer} | `accepted` | | carries Flowroute's `mdr2-` id and the segment count |"
    if isinstance(outcome, RateLimited):
        return (f"| {answer} | none yet | | the account pauses (Retry-After if given, else 1–2 s) and the "
                "message is sent again |")
    if isinstance(outcome, Retry):
        return f"| {answer} | {RETRIED} | | |"
    assert isinstance(outcome, Fail)
    return f"| {answer} | `failed` | `{outcome.code}` | {outcome.reason} |"


def send_table() -> list[str]:
    lines = ["## Answers to a send (`POST /v2.2/messages`)", "",
             "| Flowroute answered | state | reason_code | reason |", "|---|---|---|---|"]
    for answer, status, body in SEND_CASES:
        lines.append(_send_row(answer, classify_send(status, body, {}, from_number="+12065550100",
                                                     rand=lambda: 0.0)))
    lines.append(f"| no answer (timeout, connection lost) | {RETRIED}; the message list is checked first, "
                 "so a message Flowroute did take is not sent twice | | |")
    return lines + [""]


def dlr_table() -> list[str]:
    lines = ["## Delivery receipts (DLRs), by `status_code`", "",
             "| code | Flowroute's label | state | reason_code | reason |", "|---|---|---|---|---|"]
    for code, known in CODES.items():
        outcome = classify_dlr(2, "", code, known.label)
        lines.append(f"| {code} | {known.label} | `{outcome.state}` | {_code(outcome.reason_code)} | "
                     f"{outcome.reason or ''} |")
    other = classify_dlr(2, "delivery failed", 1299, "<Flowroute's status_code_description>")
    lines.append(f"| any other code ≥ 1005 (e.g. 1299) | | `{other.state}` | {_code(other.reason_code)} | "
                 f"{other.reason} |")
    worded = classify_dlr(2, "delivery failed", None)
    lines.append(f"| none, status wording says failure | | `{worded.state}` | {_code(worded.reason_code)} | "
                 f"{worded.reason} |")
    lines.append(f"| none, status `delivered` | | `{classify_dlr(2, 'delivered', None).state}` | | |")
    lines += ["", "A receipt for a message id the bridge never sent (no `cmid` in its URL and unknown to "
                  "the ledger) is not forwarded: it is logged and counted in "
                  "`smsbridge_dlr_unknown_message_total`."]
    return lines + [""]


def _code(value: str | None) -> str:
    return f"`{value}`" if value else ""


def render() -> str:
    return "\n".join([INTRO, *send_table(), *dlr_table()]).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
