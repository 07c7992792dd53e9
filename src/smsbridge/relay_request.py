"""The relay API's decisions, as pure functions: who is asking, what they ask, whether it may go.

A PBX that knows only Flowroute sends what it would send to Flowroute: the compact body
`{"to","from","body"}` (FusionPBX, `/v2/messages`) or JSON:API (`/v2.1`, `/v2.2`, SMS or MMS
with `media_urls` and `dlr_callback`). Every refusal is a `RelayError` that becomes Flowroute's
`errors[]` answer; its detail names the field and never echoes a number, a body or a secret.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import msgspec

from smsbridge.config import RelayClient, Settings
from smsbridge.destinations import DestinationRefused, check_url, networks
from smsbridge.errors import InvalidNumber
from smsbridge.events import OutboundRequest, RelayOrigin
from smsbridge.numbers import to_e164
from smsbridge.outbound_rules import Refused, decide
from smsbridge.secret import Secret

TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
          413: "Payload Too Large", 422: "Unprocessable Entity", 503: "Service Unavailable"}
MAX_URL = 2048
MAX_IDEMPOTENCY_KEY = 255
# Compared against when the access key is unknown, so a wrong key takes as long as a wrong secret.
_DUMMY_SECRET = Secret("x" * 48)

# Outbound-rule refusals: the HTTP status, and a sentence without the refused number or URL.
REFUSALS: dict[str, tuple[int, str | None]] = {
    "not_allowed": (403, None), "from_did_not_allowed": (403, "this client may not send from that number"),
    "destination_not_allowed": (403, "the outbound rules do not allow that destination"),
    "unknown_tenant": (403, None), "unknown_config": (403, None), "ambiguous_config": (403, None),
    "invalid_number": (422, "'to' is not a valid North American number"),
    "media_not_https": (422, "'media_urls' must be public https URLs"),
}


class RelayError(Exception):
    """A refusal in Flowroute's shape: HTTP status and a detail a person can act on."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def error_doc(status: int, detail: str) -> dict[str, Any]:
    """Flowroute's error body (flowroute-api.md §3.1)."""
    return {"errors": [{"id": str(uuid.uuid4()), "status": status, "title": TITLES.get(status, "Error"),
                        "detail": detail}]}


class SendAttributes(msgspec.Struct, frozen=True, kw_only=True):
    """A send's fields, in both body formats. Unknown fields are ignored, as Flowroute does."""

    to: str | int
    from_: str | int = msgspec.field(name="from")
    body: str | None = None
    media_urls: list[str] = []
    is_mms: bool | str | None = None  # Flowroute's samples send "true"; media decide MMS here
    dlr_callback: str | None = None


def authenticate(settings: Settings, authorization: str | None) -> RelayClient:
    """The relay client these Basic credentials belong to, or a 401."""
    scheme, _, encoded = (authorization or "").partition(" ")
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:  # bad base64 (binascii.Error), non-ASCII, or not UTF-8 underneath
        user, password = "", ""
    client = settings.relay_client(user) if scheme.lower() == "basic" else None
    expected = client.secret_key if client is not None else _DUMMY_SECRET
    if not expected.matches(password) or client is None:
        raise RelayError(401, "Authentication failed.")
    return client


def parse_send(raw: bytes, max_body_chars: int) -> SendAttributes:
    """Decode a compact or JSON:API send body, or refuse it naming the field."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RelayError(400, f"the body is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and "data" in doc:
        data = doc["data"]
        if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
            raise RelayError(422, "'data.attributes' must be an object")
        if data.get("type", "message") != "message":
            raise RelayError(422, "'data.type' must be \"message\"")
        doc = data["attributes"]
    if not isinstance(doc, dict):
        raise RelayError(422, "the body must be a JSON object")
    try:
        attributes = msgspec.convert(doc, SendAttributes)
    except msgspec.ValidationError as exc:
        raise RelayError(422, str(exc).replace("`$.", "`")) from None
    _check_sizes(attributes, max_body_chars)
    return attributes


def _check_sizes(attributes: SendAttributes, max_body_chars: int) -> None:
    if attributes.body is not None and len(attributes.body) > max_body_chars:
        raise RelayError(422, f"'body' is longer than {max_body_chars} characters")
    if any(len(url) > MAX_URL for url in attributes.media_urls):
        raise RelayError(422, f"'media_urls' entries must be at most {MAX_URL} characters")
    callback = attributes.dlr_callback
    if callback is not None and (len(callback) > MAX_URL or not callback.startswith(("https://", "http://"))):
        raise RelayError(422, "'dlr_callback' must be an http(s) URL")


def idempotency_key(header: str | None) -> str | None:
    if header is None:
        return None
    if not header or len(header) > MAX_IDEMPOTENCY_KEY or not header.isprintable():
        raise RelayError(422, f"'Idempotency-Key' must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return header


def _number(value: str | int, field: str) -> str:
    try:
        return to_e164(str(value))
    except InvalidNumber:
        raise RelayError(422, f"'{field}' is not a valid North American number") from None


def _check_callback(url: str, client: RelayClient) -> None:
    """An address literal the bridge will not call back is refused now (a name is checked as it
    resolves, when the receipt is posted: `workers/relay_dlr.py`)."""
    try:
        check_url(url, networks(client.dlr_callback_networks))
    except ValueError:
        raise RelayError(422, "'dlr_callback' must be an http(s) URL") from None
    except DestinationRefused:
        raise RelayError(422, "'dlr_callback' points to a private, loopback or reserved address; the bridge's "
                              "operator can allow the PBX's network (relay_clients dlr_callback_networks)") from None


def to_outbound(attributes: SendAttributes, client: RelayClient, settings: Settings,
                bridge_id: str, relay: RelayOrigin | None = None) -> OutboundRequest:
    """The outbound request this send becomes, checked now against DID ownership and the
    outbound rules (the outbound worker checks again), so a refusal is answered at once.
    `relay`: what the outbound stage records for it, when the receiver does not."""
    sender = _number(attributes.from_, "from")
    to = _number(attributes.to, "to")
    owned = {did for config in settings.configs_of(client.tenant) for did in config.dids}
    if sender not in owned:
        raise RelayError(403, "'from' is not a messaging number of this account")
    if attributes.dlr_callback is not None:
        _check_callback(attributes.dlr_callback, client)
    request = OutboundRequest(
        tenant=client.tenant, client_message_id=bridge_id, from_extension=client.extension, to=to,
        body=attributes.body or "", from_did=sender, media_urls=tuple(attributes.media_urls), relay=relay,
    )
    try:
        decide(request, settings)
    except Refused as exc:
        status, detail = REFUSALS.get(exc.code, (422, None))
        raise RelayError(status, detail or exc.reason) from None
    return request
