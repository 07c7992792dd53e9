"""Building the configured media store, and pruning it with the message history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from smsbridge.config import MediaSettings
from smsbridge.ledger import Ledger
from smsbridge.media.store import LocalStore, MediaStore

log = structlog.get_logger("smsbridge.media")
RECENT = timedelta(minutes=10)  # far longer than a download's store-then-record


async def open_store(settings: MediaSettings) -> MediaStore | None:
    """The store `[media] store` names; None when it is "off"."""
    if settings.store == "local":
        return LocalStore(settings.directory)
    if settings.store == "s3":
        from smsbridge.media.s3 import S3Store  # aiobotocore is imported only by bridges that use S3

        return await S3Store(settings).start()
    return None


async def prune_media(ledger: Ledger, store: MediaStore, older_than: timedelta) -> int:
    """Forget attachments past retention, then delete the blobs no record refers to any more.

    A blob stored lately (the same picture in a new text, whose record may not be written yet)
    is left alone: `delete_if_idle` compares its date with a little before this round began."""
    started = datetime.now(UTC) - RECENT
    removed = 0
    for key in await ledger.prune_media(older_than):
        removed += await store.delete_if_idle(key, started)
    if removed:
        log.info("media pruned", removed=removed)
    return removed
