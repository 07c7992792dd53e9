"""Answers of the SIP intake (RFC 3261 §8.2.6): the request's Vias, From, Call-ID and CSeq, a To
tag of our own (the same for every retransmission), no Contact and no body (RFC 3428 §7)."""

from __future__ import annotations

from smsbridge.sip.message import SipMessage

COPIED = ("via", "from", "call-id", "cseq")


def response(request: SipMessage, status: int, reason: str, key: str,
             extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    headers = [(name, value) for name, value in request.headers if name.lower() in COPIED]
    to = request.header("To") or ""
    headers.append(("To", to if ";tag=" in to else f"{to};tag={key[:16]}"))
    headers += [*extra, ("Server", "smsbridge")]
    return SipMessage(f"SIP/2.0 {status} {reason}", headers).encode()
