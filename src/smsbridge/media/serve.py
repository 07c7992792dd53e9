"""`GET /media/{token}` on the receiver: a stored attachment, to whoever holds a valid link.

403 for a token this bridge did not sign (or one changed since), 410 once it has expired, 404 when
the attachment was pruned (or its blob is gone). Headers: the recorded Content-Type (types a
browser would run, e.g. HTML or SVG, are served as application/octet-stream), `nosniff`, a
sandboxing CSP, and Content-Disposition with the original file name.

Both stores stream the bytes through the bridge, S3 included, rather than redirecting to a
presigned S3 URL: a presigned answer cannot carry `X-Content-Type-Options: nosniff` or the CSP,
the bucket stays private (no S3 endpoint needs to be reachable by PBXs or Flowroute), and a link
keeps working for its whole lifetime whatever S3's own 7-day presign limit. The cost is the
bridge's bandwidth, a few MB per picture.
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import quote

import msgspec
import structlog
from aiohttp import web

from smsbridge.errors import LedgerUnavailable
from smsbridge.ledger import Ledger
from smsbridge.ledger.media_ops import MediaRow
from smsbridge.media import links
from smsbridge.media.store import MediaStore
from smsbridge.secret import Secret

log = structlog.get_logger("smsbridge.media")
MEDIA_PATH = "/media/{token}"
# What may be shown in a browser as what it claims to be; anything else is a download.
INLINE_TYPES = re.compile(r"^(image/(png|jpeg|gif|bmp|webp|heic|heif)|video/[\w.+-]+|audio/[\w.+-]+|text/plain|"
                          r"text/x?-?vcard|application/pdf)$")


class MediaServing(msgspec.Struct, frozen=True):
    key: Secret
    store: MediaStore
    ledger: Ledger


MEDIA_SERVING = web.AppKey("media_serving", MediaServing)


def add_media_routes(app: web.Application, key: Secret, store: MediaStore, ledger: Ledger) -> None:
    app[MEDIA_SERVING] = MediaServing(key, store, ledger)
    app.router.add_get(MEDIA_PATH, serve_media)


def _error(status: int, code: str, detail: str) -> web.Response:
    body = msgspec.json.encode({"error": code, "detail": detail})
    return web.Response(body=body, status=status, content_type="application/json",
                        headers={"X-Content-Type-Options": "nosniff"})


def safe_file_name(name: str | None) -> str:
    """A name for Content-Disposition: no path, quotes or control characters."""
    cleaned = re.sub(r'[\x00-\x1f\x7f"\\/]', "_", (name or "").rsplit("/", 1)[-1]).strip(". ")
    return cleaned[:200] or "attachment"


def headers_for(row: MediaRow) -> dict[str, str]:
    mime_type = (row.mime_type or "").lower()
    inline = bool(INLINE_TYPES.match(mime_type))
    name = safe_file_name(row.file_name)
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    disposition = "inline" if inline else "attachment"
    return {
        "Content-Type": mime_type if inline else "application/octet-stream",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "private, max-age=3600",
    }


async def serve_media(request: web.Request) -> web.StreamResponse:
    serving = request.app[MEDIA_SERVING]
    try:
        claims = links.verify(serving.key, request.match_info["token"])
    except links.BadToken:
        return _error(403, "forbidden", "this link is not valid")
    except links.ExpiredToken:
        return _error(410, "expired", "this link has expired")
    try:
        row = await serving.ledger.media(claims.media_id)
    except LedgerUnavailable:
        return _error(503, "unavailable", "the bridge cannot look this attachment up now; retry shortly")
    if row is None or row.state != "stored" or row.blob_key != claims.key or row.tenant != claims.tenant:
        return _error(404, "not_found", "this attachment is no longer kept")
    blob = await serving.store.open(claims.key)
    if blob is None:
        log.warning("media record without its blob", media_id=row.id)
        return _error(404, "not_found", "this attachment is no longer kept")
    response = web.StreamResponse(headers=headers_for(row))
    response.content_length = blob.size
    async with contextlib.aclosing(blob.chunks) as chunks:  # closes the file or S3 stream on a disconnect
        await response.prepare(request)
        if request.method != "HEAD":  # a body after HEAD's headers would be read as the next response
            async for chunk in chunks:
                await response.write(chunk)
    await response.write_eof()
    return response
