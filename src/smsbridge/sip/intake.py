"""From a phone's SIP MESSAGE to an outbound request (pure): who may send, from which extension,
to which number, from which DID. The outbound rules still decide whether it may go."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from smsbridge.config import Settings, SipPeer
from smsbridge.errors import InvalidNumber
from smsbridge.events import OutboundRequest
from smsbridge.numbers import to_e164
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


def transaction_key(message: SipMessage) -> str:
    """Call-ID + CSeq (+ the From tag): the same for every retransmission, new for a new text."""
    from_tag = param(message.header("From") or "", "tag") or ""
    raw = f"{message.header('Call-ID')}\n{message.header('CSeq')}\n{from_tag}"
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


def _split_did(user: str) -> tuple[str | None, str]:
    match = DID_PREFIXED.match(user)
    return (match.group(1), match.group(2)) if match else (None, user)


def _may_text(settings: Settings, tenant: str, extension: str) -> bool:
    configs = {c.id for c in settings.configs_of(tenant)}
    return any(rule.config in configs and ("*" in rule.extensions or extension in rule.extensions)
               for rule in settings.outbound_rules)
