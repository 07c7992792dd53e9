"""Media of an outbound MMS: fetched from wherever the PBX put them, checked against Flowroute's
limits (750 kB per message, text included; the types carriers render) before an MMS attempt is
spent, kept in the store, and handed to Flowroute as the bridge's own public links
(`[media] public_url`), so a PBX needs no public web server of its own."""

from __future__ import annotations

import msgspec
import structlog

from smsbridge.config import Settings
from smsbridge.events import DispatchRequest
from smsbridge.ledger import Ledger
from smsbridge.ledger.media_ops import MediaRecord, outbound_ref
from smsbridge.media import links
from smsbridge.media.fetch import Fetched, FetchFailed, FetchRefused, MediaFetcher
from smsbridge.media.store import Stored
from smsbridge.outbound_rules import Refused

log = structlog.get_logger("smsbridge.media")


class OutboundMedia:
    def __init__(self, settings: Settings, fetcher: MediaFetcher, ledger: Ledger) -> None:
        assert settings.media.link_key is not None  # checked with the configuration
        self._config = settings
        self._settings = settings.media
        self._key = settings.media.link_key
        self._fetcher = fetcher
        self._ledger = ledger

    async def rehost(self, dispatch: DispatchRequest) -> DispatchRequest:
        """The request with the bridge's links in place of the PBX's URLs; `Refused` (permanent,
        nothing sent) when the media break Flowroute's limits or cannot be fetched."""
        limit = self._settings.outbound_max_bytes
        budget = limit - len(dispatch.body.encode())
        urls = []
        for position, url in enumerate(dispatch.media_urls):
            row_id, key, size = await self._keep(dispatch, position, url, budget, limit)
            budget -= size
            urls.append(links.stored_link(self._config, self._key, row_id, key, dispatch.tenant))
        return msgspec.structs.replace(dispatch, media_urls=tuple(urls))

    async def _keep(self, dispatch: DispatchRequest, position: int, url: str, budget: int,
                    limit: int) -> tuple[int, str, int]:
        try:
            if budget <= 0:
                raise FetchRefused("no room left: the text and the media before it fill the limit", "too_large")
            fetched = await self._own(url, dispatch.tenant) or await self._fetcher.fetch(
                url, None, budget, self._settings.outbound_types)
            if fetched.stored.size > budget:
                raise FetchRefused(f"{fetched.stored.size} bytes, more than the {budget} allowed", "too_large")
        except FetchRefused as exc:
            raise _refused(position, exc, limit) from None
        except FetchFailed as exc:
            raise Refused(f"media {position + 1} could not be fetched: {exc.reason}",
                          code="media_unreachable") from None
        record = MediaRecord(direction="outbound", tenant=dispatch.tenant,
                             message_ref=outbound_ref(dispatch.tenant, dispatch.client_message_id), position=position,
                             state="stored", blob_key=fetched.stored.key, mime_type=fetched.mime_type,
                             file_name=fetched.file_name or url.rsplit("/", 1)[-1].split("?")[0][:200] or None,
                             size=fetched.stored.size,
                             source_url=url)
        return await self._ledger.record_media(record), fetched.stored.key, fetched.stored.size

    async def _own(self, url: str, tenant: str) -> Fetched | None:
        """One of this bridge's links (e.g. from `POST /v1/media`): already stored, not fetched again."""
        prefix = f"{self._config.media_base_url()}/media/"
        if not url.startswith(prefix):
            return None
        try:
            claims = links.verify(self._key, url.removeprefix(prefix))
        except (links.BadToken, links.ExpiredToken) as exc:
            raise FetchFailed(f"the bridge's own media link is not valid: {exc}") from None
        row = await self._ledger.media(claims.media_id)
        if row is None or row.state != "stored" or row.blob_key != claims.key or claims.tenant != tenant:
            raise FetchFailed("the bridge's own media link names nothing this tenant has stored")
        if row.mime_type not in self._settings.outbound_types:
            raise FetchRefused(f"type {row.mime_type} is not one an MMS may carry", "wrong_type")
        return Fetched(Stored(claims.key, row.size or 0), row.mime_type or "application/octet-stream", row.file_name)

def _refused(position: int, exc: FetchRefused, limit: int) -> Refused:
    """The permanent refusal of an outbound MMS whose media `position` cannot be sent, naming why."""
    if exc.code == "destination_refused":
        return Refused(f"media {position + 1} refused: {exc.reason} (add its network to [media] "
                       "fetch_allowed_networks if it is yours)", code="media_destination_refused")
    code = "media_type_not_allowed" if exc.code == "wrong_type" else "media_too_large"
    return Refused(f"media {position + 1} refused before sending: {exc.reason} (Flowroute takes at most "
                   f"{limit} bytes per MMS, text included)", code=code)
