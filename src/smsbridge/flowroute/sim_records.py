"""What the Flowroute simulator stores and lists, as strictly as flowroute-api.md §2 and §8 put it:
message detail records (MDRs) in Flowroute's shape, the list endpoint's query, and the checks
Flowroute applies to a send. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

from smsbridge.errors import InvalidNumber
from smsbridge.numbers import us_ca_e164

DEFAULT_LIMIT = 250  # the docs give none; any positive number would do
SMS_NANODOLLARS = 4_000_000  # per segment: the SDK README's MDR shows $0.0040 for one
MMS_NANODOLLARS = 19_500_000  # the 2022 MMS capture's $0.0195


class BadQuery(Exception):
    """A list query Flowroute would refuse; `reason` says which parameter and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ListQuery(NamedTuple):
    start: datetime
    end: datetime | None  # inclusive
    limit: int
    offset: int

    def takes(self, at: datetime | None) -> bool:
        return at is not None and self.start <= at and (self.end is None or at <= self.end)


def list_query(query: Mapping[str, str]) -> ListQuery:
    """`start_date` required; dates `YYYY-MM-DD` or ISO-8601 with a zone; `limit` > 0, `offset` ≥ 0."""
    if "start_date" not in query:
        raise BadQuery("start_date is required")
    end = query.get("end_date")
    return ListQuery(
        start=_moment(query["start_date"], "start_date", end_of_day=False),
        end=None if end is None else _moment(end, "end_date", end_of_day=True),
        limit=_count(query.get("limit"), "limit", minimum=1, default=DEFAULT_LIMIT),
        offset=_count(query.get("offset"), "offset", minimum=0, default=0),
    )


def _moment(text: str, name: str, *, end_of_day: bool) -> datetime:
    """A date alone is a whole UTC day: from its first instant (start) or to its last (end)."""
    try:
        if len(text) == len("YYYY-MM-DD"):
            day = datetime.combine(date.fromisoformat(text), time(), UTC)
            return day + timedelta(days=1, microseconds=-1) if end_of_day else day
        moment = datetime.fromisoformat(text.replace(" ", "+"))  # an unescaped + in a query is a space
    except ValueError:
        raise BadQuery(f"{name} must be YYYY-MM-DD or YYYY-MM-DDTHH:mm:ss.SSZ, got {text[:40]!r}") from None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _count(text: str | None, name: str, *, minimum: int, default: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise BadQuery(f"{name} must be a whole number of at least {minimum}, got {text[:40]!r}")
    return int(text)


def send_problem(attributes: Mapping[str, Any], is_mms: bool) -> str | None:
    """Why Flowroute would refuse these send attributes (422), or None."""
    for key in ("to", "from"):
        value = attributes.get(key)
        if not isinstance(value, str) or len(value.removeprefix("+")) != 11:
            return f"'{key}' must be an 11-digit number, optionally with +"
        try:
            us_ca_e164(value)
        except InvalidNumber as exc:
            return f"'{key}' {exc.reason}"
    media = attributes.get("media_urls") or []
    if not isinstance(media, list) or not all(isinstance(u, str) for u in media):
        return "'media_urls' must be a list of URLs"
    if not attributes.get("body") and not media:  # MMS: either may be left out, not both
        return "an MMS needs 'body' or 'media_urls'" if is_mms else "'body' is required for SMS"
    return None


def amounts(is_mms: bool, segments: int) -> dict[str, Any]:
    """`amount_nanodollars` a number (as documented), `amount_display` a `$` string (as sent)."""
    nanodollars = MMS_NANODOLLARS if is_mms else SMS_NANODOLLARS * max(segments, 1)
    return {"amount_nanodollars": nanodollars, "amount_display": f"${nanodollars / 1e9:.4f}"}


def outbound_mdr(mdr_id: str, attributes: Mapping[str, Any], *, is_mms: bool, segments: int,
                 timestamp: str, self_url: str) -> dict[str, Any]:
    body = str(attributes.get("body") or "")
    record: dict[str, Any] = {
        "id": mdr_id, "type": "message", "links": {"self": self_url},
        "attributes": {
            "to": str(attributes["to"]).removeprefix("+"), "from": str(attributes["from"]).removeprefix("+"),
            "body": body, "direction": "outbound", "is_mms": is_mms, "status": "smsc submit",
            "timestamp": timestamp, "delivery_receipts": [], "message_encoding": 0 if body.isascii() else 8,
            "message_type": "longcode", **amounts(is_mms, segments)},
    }
    urls = attributes.get("media_urls") or []
    if urls:
        record["relationships"] = {"media": {"data": [{"id": f"{mdr_id}-{n}", "type": "media"}
                                                      for n, _ in enumerate(urls, 1)]}}
    return record
