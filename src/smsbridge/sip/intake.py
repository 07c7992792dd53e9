"""From a phone's SIP MESSAGE to an outbound request (pure): who may send, from which extension,
to which number, from which DID. The outbound rules still decide whether it may go."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from smsbridge.config import Settings, SipPeer
from smsbridge.errors import InvalidNumber
from smsbridge.events import OutboundRequest
from smsbridge.limits import FieldRejected, check_request
from smsbridge.numbers import to_e164
from smsbridge.outbound_rules import Refused, decide
from smsbridge.sip.message import SipMessage, param, uri_user

# FreePBX's convention, and our `from_format = "did+sender"`: the phone replies to "<DID>+<number>"
DID_PREFIXED = re.compile(r"^(\+?1?[2-9]\d{9})\+(.+)$")


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Addressed:
    """What the request says before the ledger is asked for the DID last used."""

    tenant: str
    extension: str
    to: str
    did: str | None


def transaction_key(message: SipMessage, source: str) -> str:
    """Call-ID + CSeq + the From tag + the sender's address: the same for every retransmission,
    new for a new text. The address keeps another peer (or a phone that reuses a Call-ID) from
    being answered with this transaction's cached answer, its own text dropped."""
    from_tag = param(message.header("From") or "", "tag") or ""
    raw = f"{source}\n{message.header('Call-ID')}\n{message.header('CSeq')}\n{from_tag}"
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


def peer_for(peers: list[SipPeer], address: str, username: str | None) -> SipPeer | None:
    """The peer this request comes from: address and digest user must both match where set."""
    for peer in peers:
        if peer.address and peer.address != address:
            continue
        if peer.username and peer.username != username:
            continue
        return peer
    return None


def address(message: SipMessage, tenant: str, settings: Settings) -> Addressed | Refusal:
    content_type = (message.header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != "text/plain":
        return Refusal(415, "Unsupported Media Type", (("Accept", "text/plain"),))
    extension = uri_user(message.header("From") or "")
    if not extension or not _may_text(settings, tenant, extension):
        return Refusal(404, "Not Found (unknown extension)")
    user = uri_user(message.request_uri) or uri_user(message.header("To") or "")
    did, number = _split_did(user)
    try:
        to = to_e164(number)
        did = to_e164(did) if did else None
    except InvalidNumber:
        return Refusal(484, "Address Incomplete")
    return Addressed(tenant, extension, to, did)


def body_text(message: SipMessage) -> str | Refusal:
    charset = (param(message.header("Content-Type") or "", "charset") or "utf-8").strip('"').lower()
    if charset not in ("utf-8", "utf8", "us-ascii"):
        return Refusal(415, "Unsupported Media Type (charset must be UTF-8)", (("Accept", "text/plain;charset=UTF-8"),))
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(488, "Not Acceptable Here (body is not UTF-8)")
    if not text.strip():
        return Refusal(488, "Not Acceptable Here (empty text)")
    return text.rstrip("\r\n")  # some UAs (SIPp among them) end the body with a line break: not part of the text


def request(addressed: Addressed, text: str, key: str, last_did: str | None) -> OutboundRequest:
    return OutboundRequest(tenant=addressed.tenant, client_message_id=f"sip-{key}",
                           from_extension=addressed.extension, to=addressed.to, body=text,
                           from_did=addressed.did or last_did)


# What the outbound rules' refusals become: the phone learns at once, as an AMQP or relay sender
# does, instead of a 202 for a text that then fails. Phrases name no number and no text.
RULE_REFUSALS: dict[str, tuple[int, str]] = {
    "not_allowed": (403, "Forbidden (this extension may not send texts)"),
    "from_did_not_allowed": (403, "Forbidden (not a DID this extension may send from)"),
    "destination_not_allowed": (403, "Forbidden (the outbound rules do not allow that destination)"),
    "destination_not_us_ca": (403, "Forbidden (texts go only to the US and Canada)"),
    "ambiguous_config": (403, "Forbidden (several SMS configurations: text DID+number)"),
    "unknown_tenant": (403, "Forbidden (no SMS configuration)"),
    "unknown_config": (403, "Forbidden (no SMS configuration)"),
    "invalid_number": (484, "Address Incomplete"),
    "too_long": (513, "Message Too Large (too many SMS segments)"),
    "empty": (488, "Not Acceptable Here (empty text)"),
}


SIP_PLACE = {"from_extension": "From user", "to": "Request-URI user", "from_did": "DID prefix"}


def check(request: OutboundRequest, settings: Settings) -> Refusal | None:
    """The same limits and outbound rules the outbound stage applies (it applies them again)."""
    try:
        check_request(request)
        decide(request, settings)
    except FieldRejected as exc:
        if exc.field == "body" and exc.why.startswith("is longer"):
            return Refusal(513, "Message Too Large (text too long)")
        return Refusal(400, f"Bad Request ({SIP_PLACE.get(exc.field, exc.field)} {exc.why})")
    except Refused as exc:
        status, phrase = RULE_REFUSALS.get(exc.code, (403, "Forbidden (outbound rules)"))
        return Refusal(status, phrase)
    return None


def _split_did(user: str) -> tuple[str | None, str]:
    match = DID_PREFIXED.match(user)
    return (match.group(1), match.group(2)) if match else (None, user)


def _may_text(settings: Settings, tenant: str, extension: str) -> bool:
    configs = {c.id for c in settings.configs_of(tenant)}
    return any(rule.config in configs and ("*" in rule.extensions or extension in rule.extensions)
               for rule in settings.outbound_rules)
