"""The ledger's media transactions (issue 20): one row per attachment, pruned with the history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from smsbridge.ledger.ops import utc
from smsbridge.ledger.runner import unhurried
from smsbridge.ledger.schema import media


class MediaRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the bridge knows about one attachment, as written."""

    direction: str
    tenant: str
    message_ref: str
    position: int
    state: str  # stored | missing
    blob_key: str | None = None
    mime_type: str | None = None
    file_name: str | None = None
    size: int | None = None
    source_url: str | None = None
    reason: str | None = None


class MediaRow(MediaRecord, frozen=True, kw_only=True):
    id: int
    created_at: datetime
    updated_at: datetime


def inbound_ref(tenant: str, config_id: str, mdr_id: str) -> str:
    """An inbound message's attachments, scoped like the ledger's dedupe: another tenant (or
    configuration) posting the same Flowroute id never reaches these records."""
    return f"in:{tenant}:{config_id}:{mdr_id}"


def outbound_ref(tenant: str, client_message_id: str) -> str:
    return f"out:{tenant}:{client_message_id}"


_FIELDS = [c.name for c in media.columns if c.name not in ("id", "created_at")]


def _row(mapping: Any) -> MediaRow:
    data = dict(mapping)
    data["created_at"], data["updated_at"] = utc(data["created_at"]), utc(data["updated_at"])
    return MediaRow(**data)


def record_media(c: sa.Connection, record: MediaRecord, now: datetime) -> int:
    """Insert or update (a redelivered message fetches again) the attachment's row; its id."""
    values = {**msgspec.structs.asdict(record), "created_at": now, "updated_at": now}
    insert = pg_insert if c.dialect.name == "postgresql" else sqlite_insert
    statement = insert(media).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[media.c.message_ref, media.c.position],
        set_={name: statement.excluded[name] for name in _FIELDS})
    c.execute(statement)
    where = (media.c.message_ref == record.message_ref) & (media.c.position == record.position)
    return int(c.execute(sa.select(media.c.id).where(where)).scalar_one())


def media_by_id(c: sa.Connection, media_id: int) -> MediaRow | None:
    found = c.execute(sa.select(media).where(media.c.id == media_id)).mappings().first()
    return _row(found) if found is not None else None


def media_of(c: sa.Connection, message_ref: str) -> list[MediaRow]:
    query = sa.select(media).where(media.c.message_ref == message_ref).order_by(media.c.position)
    return [_row(m) for m in c.execute(query).mappings()]


def media_of_message(c: sa.Connection, tenant: str, ident: str) -> list[MediaRow]:
    """A tenant's attachments of the message `ident` names: a Flowroute id (inbound, any of the
    tenant's configurations) or a client_message_id (outbound)."""
    inbound = media.c.message_ref.startswith(f"in:{tenant}:", autoescape=True) & media.c.message_ref.endswith(
        f":{ident}", autoescape=True)
    outbound = media.c.message_ref == outbound_ref(tenant, ident)
    query = sa.select(media).where((media.c.tenant == tenant) & (inbound | outbound))
    return [_row(m) for m in c.execute(query.order_by(media.c.message_ref, media.c.position)).mappings()]


@unhurried
def prune_media(c: sa.Connection, cutoff: datetime) -> list[str]:
    """Forget rows not touched since `cutoff`; return the blob keys no row refers to any more."""
    old = media.c.updated_at < cutoff
    keys = set(c.execute(sa.select(media.c.blob_key).where(old & media.c.blob_key.is_not(None))).scalars())
    c.execute(sa.delete(media).where(old))
    if not keys:
        return []
    kept = set(c.execute(sa.select(media.c.blob_key).where(media.c.blob_key.in_(keys))).scalars())
    return sorted(k for k in keys - kept if k is not None)
