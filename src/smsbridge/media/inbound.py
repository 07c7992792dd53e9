"""What the inbound stage does with an MMS before any delivery is published: download each
attachment into the store, record it in the ledger, and hand the PBX the bridge's signed link
in place of Flowroute's short-lived URL. A download that fails for good never costs the text:
the delivery goes out with what could be fetched and names what could not (`media_problems`),
and `smsbridge_media_missing_total` counts it for an alert."""

from __future__ import annotations

import mimetypes

import msgspec
import structlog

from smsbridge.config import Settings
from smsbridge.events import InboundMessage, Media, MediaProblem
from smsbridge.ledger import Ledger
from smsbridge.ledger.media_ops import MediaRecord, MediaRow, inbound_ref
from smsbridge.media import links
from smsbridge.media.fetch import FetchFailed, FetchRefused, MediaFetcher
from smsbridge.metrics import Metrics

log = structlog.get_logger("smsbridge.media")
Kept = tuple[tuple[Media, ...], tuple[MediaProblem, ...]]


def file_name_for(item: Media, position: int) -> str:
    """Flowroute's name for the file, or one made up from its position and type."""
    if item.file_name:
        return item.file_name
    extension = mimetypes.guess_extension(item.mime_type or "") or ""
    return f"attachment-{position + 1}{extension}"


class InboundMedia:
    def __init__(self, settings: Settings, fetcher: MediaFetcher, ledger: Ledger, metrics: Metrics) -> None:
        assert settings.media.link_key is not None  # checked with the configuration
        self._config = settings
        self._settings = settings.media
        self._key = settings.media.link_key
        self._fetcher = fetcher
        self._ledger = ledger
        self._metrics = metrics

    async def keep(self, message: InboundMessage) -> Kept:
        """The message's media as the bridge's links, and the attachments it could not keep."""
        # A redelivered message keeps what an earlier try stored: Flowroute's URL may be dead by now.
        ref = inbound_ref(message.tenant, message.config_id, message.mdr_id)
        earlier = {row.position: row for row in await self._ledger.media_of(ref) if row.state == "stored"}
        budget = self._settings.max_message_bytes
        kept: list[Media] = []
        problems: list[MediaProblem] = []
        for position, item in enumerate(message.media):
            row = earlier.get(position) or await self._fetch(message, position, item, budget)
            if row.state == "stored" and row.size is not None:
                budget -= row.size
                kept.append(self._linked(item, row))
            else:
                problems.append(MediaProblem(media_id=item.media_id, file_name=row.file_name,
                                             mime_type=row.mime_type, reason=row.reason or "not stored"))
        return tuple(kept), tuple(problems)

    async def _fetch(self, message: InboundMessage, position: int, item: Media, budget: int) -> MediaRow:
        ref = inbound_ref(message.tenant, message.config_id, message.mdr_id)
        record = MediaRecord(direction="inbound", tenant=message.tenant, message_ref=ref, position=position,
                             state="missing", mime_type=item.mime_type,
                             file_name=file_name_for(item, position), source_url=item.url)
        limit = min(self._settings.max_file_bytes, budget)
        try:
            if limit <= 0:
                raise FetchRefused(f"the message's media exceed {self._settings.max_message_bytes} bytes",
                                   "too_large")
            fetched = await self._fetcher.fetch(item.url, item.mime_type, limit)
        except FetchFailed as exc:
            kind = "refused" if isinstance(exc, FetchRefused) else "failed"
            self._metrics.media_missing.labels(message.tenant, kind).inc()
            log.warning("attachment not kept: delivered without it", position=position, reason=exc.reason,
                        outcome=f"media_{kind}")
            record = _with(record, reason=exc.reason)
        else:
            self._metrics.media_fetched_bytes.labels(message.tenant).inc(fetched.stored.size)
            record = _with(record, state="stored", blob_key=fetched.stored.key, mime_type=fetched.mime_type,
                           size=fetched.stored.size)
        media_id = await self._ledger.record_media(record)
        return await self._row(media_id)

    async def _row(self, media_id: int) -> MediaRow:
        row = await self._ledger.media(media_id)
        assert row is not None  # just written
        return row

    def _linked(self, item: Media, row: MediaRow) -> Media:
        assert row.blob_key is not None
        url = links.stored_link(self._config, self._key, row.id, row.blob_key, row.tenant)
        return Media(url=url, mime_type=row.mime_type, file_name=row.file_name, size=row.size,
                     media_id=item.media_id)


def _with(record: MediaRecord, **changes: object) -> MediaRecord:
    return msgspec.structs.replace(record, **changes)
