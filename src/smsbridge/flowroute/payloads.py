"""Building Flowroute-shaped webhook payloads (both shapes), for the simulator and operators."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def new_mdr_id() -> str:
    return f"mdr2-{uuid.uuid4().hex}"


def flowroute_number(e164: str) -> str:
    """Webhooks carry 11 digits without `+` (every capture we know of)."""
    return e164.removeprefix("+")


def timestamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def inbound_payload(*, sender: str, did: str, body: str | None, media: list[dict[str, Any]] | None = None,
                    mdr_id: str | None = None, shape: str = "jsonapi") -> dict[str, Any]:
    """An inbound SMS/MMS as Flowroute posts it; `shape="legacy"` gives the flat v2 body (SMS only)."""
    mdr_id = mdr_id or new_mdr_id()
    if shape == "legacy":
        return {"to": flowroute_number(did), "from": flowroute_number(sender), "body": body or "", "id": mdr_id}
    media = media or []
    attributes: dict[str, Any] = {
        "amount_display": "$0.0195" if media else "$0.0070", "amount_nanodollars": "19500000" if media else "7000000",
        "body": body, "delivery_receipts": [], "direction": "inbound", "from": flowroute_number(sender),
        "is_mms": bool(media), "message_encoding": 0 if (body or "").isascii() else 8, "message_type": "longcode",
        "status": "" if media else "delivered", "timestamp": timestamp(), "to": flowroute_number(did),
    }
    doc: dict[str, Any] = {"data": {"id": mdr_id, "type": "message", "attributes": attributes}}
    if media:
        ids = [f"{uuid.uuid4().int % 10**18}-{m.get('file_name', 'file')}" for m in media]
        doc["data"]["relationships"] = {"media": {"data": [{"id": i, "type": "media"} for i in ids]}}
        doc["included"] = [
            {"id": i, "type": "media", "attributes": {"file_name": m.get("file_name", "file"),
                                                       "file_size": m.get("file_size", 0),
                                                       "mime_type": m.get("mime_type", "application/octet-stream"),
                                                       "url": m["url"]},
             "links": {"self": f"https://api.flowroute.com/v2.2/media/{i}"}}
            for i, m in zip(ids, media, strict=True)
        ]
    return doc


def dlr_payload(mdr_id: str, *, level: int, status: str, code: int | None, description: str,
                body: str = "") -> dict[str, Any]:
    return {"data": {"id": mdr_id, "type": "delivery_receipt",
                     "attributes": {"body": body, "level": level, "status": status, "status_code": code,
                                    "status_code_description": description, "timestamp": timestamp()},
                     "links": {"related": f"https://api.flowroute.com/v2.2/messages/{mdr_id}"}}}


def error_body(status: int, title: str, detail: str) -> dict[str, Any]:
    """Flowroute's documented error object (flowroute-api.md §3.1): id, status, title, detail, no more."""
    return {"errors": [{"id": str(uuid.uuid4()), "status": status, "title": title, "detail": detail}]}
