"""Field limits, enforced once at intake, the same for SQLite and PostgreSQL (pure).

What SQLite stores without a word, PostgreSQL refuses: a NUL in a text, a string longer than its
column, an integer beyond int32. And an id goes into the PBX's `Idempotency-Key` header, where a
control character is refused. So every field from outside is checked here, before anything is
published or written, and a refusal names the field: a 400 for a webhook, a `failed` status for
a PBX request. The limits follow the ledger's columns (`ledger/schema.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

from smsbridge.errors import PermanentError
from smsbridge.events import OutboundRequest
from smsbridge.flowroute.webhook import ParsedMessage, ParsedReceipt

ID_CHARS = 80  # messages.mdr_id, deliveries.mdr_id
NUMBER_CHARS = 32  # messages.from_number / to_number
CLIENT_ID_CHARS = 128  # messages.client_message_id
NAME_CHARS = 64  # tenant, config_id, from_extension
BODY_CHARS = 10_000  # far beyond Flowroute's MMS text; a bound, not a rule
URL_CHARS = 2048
SHORT_TEXT_CHARS = 256  # a DLR's status, a media's mime type or file name
DESCRIPTION_CHARS = 1024
MAX_MEDIA = 50  # the configured `max_media` decides what is sent; this bounds what is read
INT32 = (-(2**31), 2**31 - 1)  # an INTEGER column
SIZE = (0, 2**53)  # a media size: a JSON number every client can hold exactly


class FieldRejected(PermanentError):
    """A field breaks a limit; `field` names it (as in the payload), `why` says how."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"field '{field}' {why}", code="invalid_field")
        self.field = field
        self.why = why


def check_text(field: str, value: str | None, limit: int, *, single_line: bool = True,
               required: bool = False, ascii_only: bool = False) -> None:
    """No NUL anywhere, no control character in a one-line field, at most `limit` characters."""
    if value is None or value == "":
        if required:
            raise FieldRejected(field, "is empty")
        return
    if len(value) > limit:
        raise FieldRejected(field, f"is longer than {limit} characters ({len(value)})")
    if "\x00" in value:
        raise FieldRejected(field, "contains a NUL character")
    if single_line and not value.isprintable():
        raise FieldRejected(field, "contains a control character")
    if ascii_only and not value.isascii():  # it becomes part of an HTTP header (Idempotency-Key)
        raise FieldRejected(field, "contains a character other than ASCII")


def check_int(field: str, value: int | None, bounds: tuple[int, int] = INT32) -> None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise FieldRejected(field, f"is out of range ({bounds[0]} to {bounds[1]})")


def check_webhook(parsed: ParsedMessage | ParsedReceipt, client_message_id: str | None = None) -> None:
    """Every field of a parsed Flowroute webhook (and the `cmid` of its URL) within its limit."""
    check_text("id", parsed.mdr_id, ID_CHARS, required=True, ascii_only=True)
    check_text("cmid", client_message_id, CLIENT_ID_CHARS)
    if isinstance(parsed, ParsedReceipt):
        _check_receipt(parsed)
        return
    check_text("from", parsed.from_, NUMBER_CHARS, required=True)
    check_text("to", parsed.to, NUMBER_CHARS, required=True)
    check_text("body", parsed.body, BODY_CHARS, single_line=False)
    check_int("message_encoding", parsed.encoding)
    if len(parsed.media) > MAX_MEDIA:
        raise FieldRejected("included", f"has more than {MAX_MEDIA} media")
    for media in parsed.media:
        check_text("included.id", media.media_id, ID_CHARS)
        check_text("included.attributes.url", media.url, URL_CHARS, required=True)
        check_text("included.attributes.mime_type", media.mime_type, SHORT_TEXT_CHARS)
        check_text("included.attributes.file_name", media.file_name, SHORT_TEXT_CHARS)
        check_int("included.attributes.file_size", media.size, SIZE)
    for problem in parsed.media_problems:  # named in the delivery: bounded like a usable attachment
        check_text("included.id", problem.media_id, ID_CHARS)
        check_text("included.attributes.mime_type", problem.mime_type, SHORT_TEXT_CHARS)
        check_text("included.attributes.file_name", problem.file_name, SHORT_TEXT_CHARS)


def _check_receipt(parsed: ParsedReceipt) -> None:
    check_int("level", parsed.level)
    check_int("status_code", parsed.status_code)
    check_text("status", parsed.status, SHORT_TEXT_CHARS)
    check_text("status_code_description", parsed.description, DESCRIPTION_CHARS, single_line=False)
    check_text("to", parsed.to, NUMBER_CHARS)
    check_text("from", parsed.from_, NUMBER_CHARS)


def check_request(request: OutboundRequest) -> None:
    """Every field of a PBX's outbound request within its limit (the rules judge the values)."""
    check_text("tenant", request.tenant, NAME_CHARS, required=True)
    check_text("client_message_id", request.client_message_id, CLIENT_ID_CHARS, required=True)
    check_text("from_extension", request.from_extension, NAME_CHARS, required=True)
    check_text("to", request.to, NUMBER_CHARS, required=True)
    check_text("from_did", request.from_did, NUMBER_CHARS)
    check_text("config_id", request.config_id, NAME_CHARS)
    check_text("body", request.body, BODY_CHARS, single_line=False)
    _check_urls("media_urls", request.media_urls)


def _check_urls(field: str, urls: Iterable[str]) -> None:
    for i, url in enumerate(urls):
        if i >= MAX_MEDIA:
            raise FieldRejected(field, f"has more than {MAX_MEDIA} entries")
        check_text(f"{field}[{i}]", url, URL_CHARS, required=True)
