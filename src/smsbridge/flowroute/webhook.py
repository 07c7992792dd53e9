"""Flowroute webhook payloads, in every shape flowroute-api.md §5–§6 documents.

- JSON:API inbound SMS/MMS: `{"data": {"type": "message", "attributes": {...}}, "included": [...]}`
- legacy flat inbound SMS: `{"to", "from", "body", "id"}` (still sent to some accounts)
- JSON:API DLR: `{"data": {"type": "delivery_receipt", "attributes": {...}}}`
- flat DLR: `{"type": "delivery_receipt", "id", "attributes": {...}}` (seen by one integrator)

Quirks tolerated: `body` null, numbers as JSON numbers (a 2022 capture's `"to": 16085612999`),
amounts as strings, `status_code` null/int/string, `level` missing, `is_mms` as "true"/"false",
timestamps of any ISO-8601 precision. Numbers leave here as text; `intake` normalises them.
`parse_webhook` is pure: it returns a parsed payload or raises `UnknownShape`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from smsbridge.events import Media, MediaProblem


class UnknownShape(Exception):
    """Valid JSON we cannot read as a Flowroute message or DLR; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ParsedMessage(msgspec.Struct, frozen=True, kw_only=True):
    mdr_id: str
    from_: str
    to: str
    body: str
    is_mms: bool
    media: tuple[Media, ...]
    encoding: int | None
    timestamp: datetime | None
    shape: str
    media_problems: tuple[MediaProblem, ...] = ()


class ParsedReceipt(msgspec.Struct, frozen=True, kw_only=True):
    mdr_id: str
    level: int | None
    status: str
    status_code: int | None
    description: str | None
    timestamp: datetime | None
    to: str | None
    from_: str | None


Loose = int | str | None
Number = str | int  # Flowroute's numbers are strings, but one real capture sent a JSON number


class _MessageAttrs(msgspec.Struct):
    to: Number
    from_: Number = msgspec.field(name="from")
    body: str | None = None
    is_mms: bool = False
    message_encoding: Loose = None
    timestamp: str | None = None
    direction: str | None = None


class _Ref(msgspec.Struct):
    id: str
    type: str = "media"


class _RefList(msgspec.Struct):
    data: list[_Ref] = []


class _Relationships(msgspec.Struct):
    media: _RefList | None = None


class _MessageData(msgspec.Struct):
    id: str
    attributes: _MessageAttrs
    relationships: _Relationships | None = None


class _MediaAttrs(msgspec.Struct):
    url: str | None = None
    mime_type: str | None = None
    file_name: str | None = None
    file_size: Loose = None


class _Included(msgspec.Struct):
    id: str
    type: str
    attributes: dict[str, Any] = {}


class _MessageDoc(msgspec.Struct):
    data: _MessageData
    included: list[_Included] = []


class _Legacy(msgspec.Struct):
    id: str
    to: Number
    from_: Number = msgspec.field(name="from")
    body: str | None = None


class _ReceiptAttrs(msgspec.Struct):
    level: Loose = None
    status: str | None = None
    status_code: Loose = None
    status_code_description: str | None = None
    timestamp: str | None = None
    to: Number | None = None
    from_: Number | None = msgspec.field(default=None, name="from")


class _Receipt(msgspec.Struct):
    id: str
    attributes: _ReceiptAttrs = msgspec.field(default_factory=_ReceiptAttrs)


def parse_webhook(doc: Any) -> ParsedMessage | ParsedReceipt:
    """Recognise the payload's shape and normalise it; raise `UnknownShape` otherwise."""
    if not isinstance(doc, dict):
        raise UnknownShape(f"expected a JSON object, got {type(doc).__name__}")
    data = doc.get("data")
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "message":
            return _jsonapi_message(doc)
        if kind == "delivery_receipt":
            return _receipt(data)
        raise UnknownShape(f"data.type is {kind!r}, expected 'message' or 'delivery_receipt'")
    if doc.get("type") == "delivery_receipt":
        return _receipt(doc)
    if {"to", "from", "id"} <= doc.keys():
        return _legacy_message(doc)
    keys = ", ".join(sorted(doc)[:8]) or "none"
    raise UnknownShape(f"neither a Flowroute message nor a delivery receipt (top-level keys: {keys})")


def _convert(value: Any, typ: type[Any], what: str) -> Any:
    try:
        return msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError as exc:
        raise UnknownShape(f"{what}: {exc}") from None


def _jsonapi_message(doc: dict[str, Any]) -> ParsedMessage:
    parsed: _MessageDoc = _convert(doc, _MessageDoc, "JSON:API message")
    attrs = parsed.data.attributes
    if attrs.direction not in (None, "inbound"):
        raise UnknownShape(f"message direction is {attrs.direction!r}, expected 'inbound'")
    media, problems = _media(parsed.data.relationships, parsed.included)
    return ParsedMessage(
        mdr_id=parsed.data.id,
        from_=str(attrs.from_),
        to=str(attrs.to),
        body=attrs.body or "",
        is_mms=attrs.is_mms or bool(media) or bool(problems),
        media=media,
        media_problems=problems,
        encoding=_int_or_none(attrs.message_encoding),
        timestamp=parse_timestamp(attrs.timestamp),
        shape="jsonapi",
    )


def _legacy_message(doc: dict[str, Any]) -> ParsedMessage:
    parsed: _Legacy = _convert(doc, _Legacy, "legacy message")
    return ParsedMessage(
        mdr_id=parsed.id,
        from_=str(parsed.from_),
        to=str(parsed.to),
        body=parsed.body or "",
        is_mms=False,
        media=(),
        encoding=None,
        timestamp=None,
        shape="legacy",
    )


def _receipt(data: dict[str, Any]) -> ParsedReceipt:
    parsed: _Receipt = _convert(data, _Receipt, "delivery receipt")
    attrs = parsed.attributes
    return ParsedReceipt(
        mdr_id=parsed.id,
        level=_int_or_none(attrs.level),
        status=(attrs.status or "").strip(),
        status_code=_int_or_none(attrs.status_code),
        description=attrs.status_code_description,
        timestamp=parse_timestamp(attrs.timestamp),
        to=None if attrs.to is None else str(attrs.to),
        from_=None if attrs.from_ is None else str(attrs.from_),
    )


def _media(relationships: _Relationships | None,
           included: list[_Included]) -> tuple[tuple[Media, ...], tuple[MediaProblem, ...]]:
    """Media in the order `relationships` lists them, matched to `included` by id, and the
    attachments that cannot be delivered (no usable URL), named.

    `included` entries nobody references are kept too (after the referenced ones): a
    mismatched id must never cost the PBX an attachment. One bad attachment never costs the
    text or the other attachments either.
    """
    if not included:  # an SMS: nothing to match (a reference with nothing included has no URL)
        return (), ()
    by_id = {item.id: item for item in included if item.type == "media"}
    refs = [ref.id for ref in (relationships.media.data if relationships and relationships.media else [])]
    ordered = [by_id[i] for i in refs if i in by_id] + [m for i, m in by_id.items() if i not in refs]
    found = [_one_media(item) for item in ordered]
    return (tuple(m for m in found if isinstance(m, Media)), tuple(m for m in found if isinstance(m, MediaProblem)))


def _one_media(item: _Included) -> Media | MediaProblem:
    name = item.attributes.get("file_name")
    name = name if isinstance(name, str) else None
    try:
        attrs = msgspec.convert(item.attributes, _MediaAttrs, strict=False)
    except msgspec.ValidationError as exc:
        return MediaProblem(media_id=item.id, file_name=name, reason=f"unreadable attributes: {exc}")
    if not attrs.url:
        return MediaProblem(media_id=item.id, file_name=name, mime_type=attrs.mime_type,
                            reason="Flowroute gave no URL for it")
    if not attrs.url.startswith(("https://", "http://")):
        return MediaProblem(media_id=item.id, file_name=name, mime_type=attrs.mime_type,
                            reason="its URL is not http(s)")
    return Media(
        url=attrs.url,
        mime_type=attrs.mime_type,
        file_name=attrs.file_name,
        size=_int_or_none(attrs.file_size),
        media_id=item.id,
    )


def _int_or_none(value: int | str | None) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii():  # int() takes other scripts' digits ("٣")
        try:
            return int(value.strip())
        except ValueError:  # "²" and "--5" pass str.isdigit() checks but are not integers
            return None
    return None


def parse_timestamp(value: str | None) -> datetime | None:
    """Lenient ISO-8601: `…21.980000Z`, `…02.00Z`, `…+00:00`; naive times are UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
