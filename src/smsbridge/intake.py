"""From a Flowroute webhook's body to the event the inbound stage consumes (pure)."""

from __future__ import annotations

import msgspec

from smsbridge.config import SmsConfig
from smsbridge.errors import InvalidNumber
from smsbridge.events import DeliveryReceipt, InboundMessage
from smsbridge.flowroute.webhook import ParsedMessage, ParsedReceipt, parse_webhook
from smsbridge.limits import check_webhook
from smsbridge.numbers import sender_e164, to_e164


class Unroutable(Exception):
    """A well-formed webhook this configuration must not accept (e.g. a DID it does not own)."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class NotJson(Exception):
    """The body is not JSON we can read (malformed, not UTF-8, nested too deeply)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_webhook(raw: bytes, config: SmsConfig, *, client_message_id: str | None = None
                 ) -> InboundMessage | DeliveryReceipt:
    """A webhook's body to its event. Raises `NotJson`, `FieldRejected`, `UnknownShape` or
    `Unroutable`, and nothing else, whatever the body (tests/unit/test_hostile_input.py)."""
    try:
        doc = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:  # msgspec raises RecursionError past its depth
        raise NotJson(f"body is not valid JSON: {exc}") from None
    try:
        return to_event(parse_webhook(doc), config, client_message_id=client_message_id)
    except RecursionError:  # converting a deep value that decoding just allowed
        raise NotJson("body is nested too deeply") from None


def to_event(
    parsed: ParsedMessage | ParsedReceipt, config: SmsConfig, *, client_message_id: str | None = None
) -> InboundMessage | DeliveryReceipt:
    """The event for a parsed webhook; raises `FieldRejected` (a field breaks its limit) or `Unroutable`."""
    check_webhook(parsed, client_message_id)
    if isinstance(parsed, ParsedReceipt):
        return DeliveryReceipt(
            tenant=config.tenant,
            config_id=config.id,
            mdr_id=parsed.mdr_id,
            level=parsed.level,
            status=parsed.status,
            status_code=parsed.status_code,
            description=parsed.description,
            flowroute_timestamp=parsed.timestamp,
            to=sender_e164(parsed.to) if parsed.to else None,
            from_=sender_e164(parsed.from_) if parsed.from_ else None,
            client_message_id=client_message_id,
        )
    return InboundMessage(
        tenant=config.tenant,
        config_id=config.id,
        mdr_id=parsed.mdr_id,
        from_=sender_e164(parsed.from_),
        to=_our_did(parsed.to, config),
        body=parsed.body,
        is_mms=parsed.is_mms,
        media=parsed.media,
        encoding=parsed.encoding,
        flowroute_timestamp=parsed.timestamp,
        payload_shape="legacy" if parsed.shape == "legacy" else "jsonapi",
        media_problems=parsed.media_problems,
    )


def _our_did(raw: str, config: SmsConfig) -> str:
    try:
        did = to_e164(raw)
    except InvalidNumber as exc:
        raise Unroutable(f"'to' is not a DID: {exc.reason}", "bad_did") from None
    if did not in config.dids:
        raise Unroutable(f"{did} is not a DID of SMS configuration '{config.id}'", "unknown_did")
    return did
