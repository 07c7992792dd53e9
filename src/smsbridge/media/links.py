"""Signed links to stored media: `<public url>/media/<token>`.

The token binds the ledger's media record, the blob's hash, the tenant and an expiry time, signed
with HMAC-SHA256 under `[media] link_key`. Nothing is looked up to check a signature, so a tampered
token is refused (403) before any database work; an expired one gets 410; one whose record was
pruned gets 404 (`serve.py`). Unlike an S3 presigned URL (at most 7 days), the lifetime is ours
to choose, per tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import msgspec

from smsbridge.config import Settings
from smsbridge.secret import Secret


class LinkClaims(msgspec.Struct, frozen=True):
    media_id: int
    key: str
    tenant: str
    expires: int  # Unix time, seconds


class BadToken(Exception):
    """Not a token this bridge signed (or signed, then changed)."""


class ExpiredToken(Exception):
    """A genuine token past its expiry time."""


_claims_decoder = msgspec.json.Decoder(LinkClaims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: Secret, payload: str) -> str:
    return _b64(hmac.new(key.reveal().encode(), payload.encode(), hashlib.sha256).digest())


def sign(key: Secret, claims: LinkClaims) -> str:
    payload = _b64(msgspec.json.encode(claims))
    return f"{payload}.{_signature(key, payload)}"


def verify(key: Secret, token: str, *, now: float | None = None) -> LinkClaims:
    """The token's claims; `BadToken` if it was not signed with `key`, `ExpiredToken` past expiry."""
    payload, _, signature = token.partition(".")
    if not hmac.compare_digest(signature.encode(), _signature(key, payload).encode()):
        raise BadToken("signature does not match")
    try:
        claims = _claims_decoder.decode(_unb64(payload))
    except (ValueError, msgspec.DecodeError):
        raise BadToken("unreadable claims") from None
    if claims.expires <= (time.time() if now is None else now):
        raise ExpiredToken(f"expired at {claims.expires}")
    return claims


def link(base_url: str, key: Secret, claims: LinkClaims) -> str:
    return f"{base_url.rstrip('/')}/media/{sign(key, claims)}"


def claims_for(media_id: int, blob_key: str, tenant: str, lifetime_s: float, *, now: float | None = None) -> LinkClaims:
    issued = time.time() if now is None else now
    return LinkClaims(media_id=media_id, key=blob_key, tenant=tenant, expires=int(issued + lifetime_s))


def stored_link(settings: Settings, key: Secret, media_id: int, blob_key: str, tenant: str) -> str:
    """The link to a file `tenant` has stored, under the bridge's media URL, valid for the
    tenant's link lifetime."""
    claims = claims_for(media_id, blob_key, tenant, settings.media.link_lifetime_s(tenant))
    return link(settings.media_base_url(), key, claims)
