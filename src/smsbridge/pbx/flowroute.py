"""Flowroute-shaped delivery: POST each inbound text to the PBX's own Flowroute webhook.

A PBX that already parses Flowroute's webhooks (PortSIP, FreePBX SMS Connector, FusionPBX) gets
the body Flowroute would have posted: JSON:API, `data.id` the original `mdr2-…` id (the PBX's
dedupe key), numbers as 11 digits, MMS media in `included`. The PBX routes the text to its users
itself, so it gets each text once per webhook URL, however many extensions the rule named.
Answers are classified as for the HTTP adapter: any 2xx delivered; 408, 429, 5xx, timeouts and
refused connections retried; any other 4xx permanent.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from smsbridge.config import FlowrouteTarget
from smsbridge.events import InboundDelivery, Media
from smsbridge.flowroute.payloads import timestamp
from smsbridge.pbx.http import post_to_pbx

# Exactly this, no charset: FusionPBX's Flowroute hook compares the header for equality.
CONTENT_TYPE = "application/json"


def flowroute_digits(number: str) -> str:
    """Flowroute's webhooks carry numbers as digits without `+` (11 for NANP)."""
    return number.removeprefix("+")


def _media_id(delivery: InboundDelivery, media: Media, index: int) -> str:
    return media.media_id or f"{delivery.mdr_id}-{index}"


def _included(delivery: InboundDelivery) -> list[dict[str, Any]]:
    return [
        {"id": _media_id(delivery, m, i), "type": "media",
         "attributes": {"file_name": m.file_name or f"file{i}", "file_size": m.size or 0,
                        "mime_type": m.mime_type or "application/octet-stream", "url": m.url}}
        for i, m in enumerate(delivery.media, 1)
    ]


def webhook_body(delivery: InboundDelivery) -> dict[str, Any]:
    """The JSON:API document Flowroute posts for an inbound SMS or MMS (flowroute-api.md §5.2-5.3)."""
    attributes: dict[str, Any] = {
        "body": delivery.body, "delivery_receipts": [], "direction": "inbound",
        "from": flowroute_digits(delivery.from_), "is_mms": delivery.is_mms,
        "message_encoding": 0 if delivery.body.isascii() else 8, "message_type": "longcode",
        "status": "" if delivery.is_mms else "delivered", "timestamp": timestamp(delivery.received_at),
        "to": flowroute_digits(delivery.to),
    }
    data: dict[str, Any] = {"id": delivery.mdr_id, "type": "message", "attributes": attributes}
    doc: dict[str, Any] = {"data": data}
    if delivery.media:
        included = _included(delivery)
        data["relationships"] = {"media": {"data": [{"id": m["id"], "type": "media"} for m in included]}}
        doc["included"] = included
    return doc


def legacy_body(delivery: InboundDelivery) -> dict[str, Any]:
    """Flowroute's flat v2 inbound body (flowroute-api.md §5.4): SMS only, media as links in the text."""
    links = "".join(f"\n{m.url}" for m in delivery.media)
    return {"to": flowroute_digits(delivery.to), "from": flowroute_digits(delivery.from_),
            "body": delivery.body + links, "id": delivery.mdr_id}


def url_for(target: FlowrouteTarget, extension: str) -> str:
    return target.extension_urls.get(extension, target.url)


def post_url(target: FlowrouteTarget, delivery: InboundDelivery) -> str | None:
    """Where this delivery goes, or None when an earlier extension of the same text already goes
    to that URL: the PBX behind it routes the text itself and must get it once."""
    url = url_for(target, delivery.extension)
    extensions = delivery.extensions or (delivery.extension,)
    first = next((e for e in extensions if url_for(target, e) == url), delivery.extension)
    return url if first == delivery.extension else None


class FlowrouteAdapter:
    kind = "flowroute"

    def __init__(self, target: FlowrouteTarget, session: aiohttp.ClientSession) -> None:
        self._target = target
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=target.timeout_s)

    async def deliver(self, delivery: InboundDelivery) -> None:
        url = post_url(self._target, delivery)
        if url is None:
            return  # handed over with another extension of this text
        body = legacy_body(delivery) if self._target.payload == "legacy" else webhook_body(delivery)
        await post_json(self._session, url, body, self._timeout,
                        idempotency_key=delivery.mdr_id)

    async def close(self) -> None:
        return None


async def post_json(session: aiohttp.ClientSession, url: str, doc: dict[str, Any],
                    timeout: aiohttp.ClientTimeout, *, idempotency_key: str) -> None:
    """POST a Flowroute-shaped document; return on 2xx, raise Retryable/PermanentError otherwise."""
    headers = {"Content-Type": CONTENT_TYPE, "Idempotency-Key": idempotency_key}
    await post_to_pbx(session, url, msgspec.json.encode(doc), headers, timeout)
