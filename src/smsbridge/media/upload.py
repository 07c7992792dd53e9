"""`POST /v1/media` on the receiver: for PBXs that cannot put a file at a public URL.

The body is the file itself, its type in `Content-Type`, its name in `?file_name=`; the PBX
authenticates with its tenant's token (`Authorization: Bearer <[media] upload_tokens.<tenant>>`).
The file is checked against Flowroute's limits (`outbound_max_bytes`, `outbound_types`) as it
streams in, stored, recorded, and answered with a signed link to put in an outbound request's
`media_urls` (the outbound stage recognises its own links and does not fetch them again).
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from aiohttp import web

from smsbridge.config import Settings
from smsbridge.errors import LedgerUnavailable
from smsbridge.ledger.media_ops import MediaRecord
from smsbridge.media import links
from smsbridge.media.serve import MEDIA_SERVING, safe_file_name
from smsbridge.media.store import TooLarge

log = structlog.get_logger("smsbridge.media")
UPLOAD_PATH = "/v1/media"
UPLOAD_SETTINGS = web.AppKey("media_upload_settings", Settings)
READ_CHUNK = 64 * 1024


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.Response(body=msgspec.json.encode({"error": code, "detail": detail}), status=status,
                        content_type="application/json")


def tenant_of(settings: Settings, authorization: str) -> str | None:
    """The tenant whose upload token this is; every token is compared, so the time says nothing."""
    offered = authorization.removeprefix("Bearer ").strip()
    found = None
    for tenant, token in settings.media.upload_tokens.items():
        if token.matches(offered) and offered:
            found = tenant
    return found


async def upload(request: web.Request) -> web.Response:
    settings, serving = request.app[UPLOAD_SETTINGS], request.app[MEDIA_SERVING]
    tenant = tenant_of(settings, request.headers.get("Authorization", ""))
    if tenant is None:
        return _error(401, "unauthorized", "a tenant's upload token is required (Authorization: Bearer ...)")
    mime_type = request.content_type
    if mime_type not in settings.media.outbound_types:
        return _error(415, "media_type_not_allowed", f"type {mime_type} is not one an MMS may carry "
                                                     f"(allowed: {', '.join(settings.media.outbound_types)})")
    limit = settings.media.outbound_max_bytes
    deadline = settings.receiver.read_timeout_s  # a body dribbled in must not hold the connection
    try:
        async with asyncio.timeout(deadline):
            stored = await serving.store.put(request.content.iter_chunked(READ_CHUNK), max_bytes=limit)
    except TooLarge:
        return _error(413, "media_too_large", f"larger than {limit} bytes, Flowroute's limit per MMS")
    except TimeoutError:
        return _error(408, "timeout", f"the file did not arrive within {deadline:g} s")
    name = safe_file_name(request.query.get("file_name"))
    try:
        media_id = await serving.ledger.record_media(MediaRecord(
            direction="upload", tenant=tenant, message_ref=f"upload:{tenant}:{stored.key}", position=0,
            state="stored", blob_key=stored.key, mime_type=mime_type, file_name=name, size=stored.size))
    except LedgerUnavailable:  # the blob stays, unreferenced, until the pruner's next pass
        return _error(503, "unavailable", "the bridge cannot record the file now; retry shortly")
    url = links.stored_link(settings, serving.key, media_id, stored.key, tenant)
    log.info("media uploaded", tenant=tenant, size=stored.size, media_id=media_id)
    return web.Response(body=msgspec.json.encode({"url": url, "size": stored.size, "sha256": stored.key,
                                                  "mime_type": mime_type}),
                        status=201, content_type="application/json")


def add_upload_route(app: web.Application, settings: Settings) -> None:
    """Call after `add_media_routes` (the upload shares its store, ledger and key)."""
    app[UPLOAD_SETTINGS] = settings
    app.router.add_post(UPLOAD_PATH, upload)
