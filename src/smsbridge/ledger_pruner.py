"""Forgetting message history past its retention, in the background of every process that has a ledger."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy.exc import SQLAlchemyError

from smsbridge.config import LedgerSettings
from smsbridge.errors import LedgerUnavailable
from smsbridge.ledger import Ledger
from smsbridge.media.setup import prune_media
from smsbridge.media.store import MediaStore

log = structlog.get_logger("smsbridge.ledger")


async def prune_forever(ledger: Ledger, settings: LedgerSettings, media: MediaStore | None = None) -> None:
    """Prune now, then every `prune_interval_s`; a failed round is logged and tried again next time.
    Kept media go with the history: same retention, their blobs once nothing refers to them."""
    while True:
        try:
            removed = await ledger.prune(timedelta(days=settings.retention_days))
            if removed:
                log.info("ledger pruned", removed=removed, retention_days=settings.retention_days)
        except (SQLAlchemyError, LedgerUnavailable) as exc:  # an outage too: the task must live on
            log.error("ledger prune failed", error=repr(exc))
        if media is not None:
            try:
                await prune_media(ledger, media, timedelta(days=settings.retention_days))
            except Exception as exc:  # the store's errors (OS, S3) are many: any of them waits for next time
                log.error("media prune failed", error=repr(exc))
        await asyncio.sleep(settings.prune_interval_s)
