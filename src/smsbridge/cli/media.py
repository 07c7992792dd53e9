"""`smsbridge media`: a message's attachments (show), fetching missing ones again while
Flowroute's URL still works (fetch), and pruning past retention now (prune)."""

from __future__ import annotations

import argparse
from datetime import timedelta

import msgspec

from smsbridge.config import Settings
from smsbridge.destinations import guarded_session
from smsbridge.ledger import Ledger, open_from_settings
from smsbridge.ledger.media_ops import MediaRecord, MediaRow
from smsbridge.media import links
from smsbridge.media.fetch import FetchFailed, MediaFetcher
from smsbridge.media.setup import open_store, prune_media
from smsbridge.media.store import MediaStore


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    media = sub.add_parser("media", help="MMS attachments kept by the bridge: show, fetch again, prune")
    verbs = media.add_subparsers(dest="verb", required=True)
    for name, text in (("show", "a message's attachments, with a fresh link to each stored one"),
                       ("fetch", "download a message's missing attachments again (while Flowroute's URL works)")):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("tenant", help="the tenant whose message it is")
        verb.add_argument("ref", help="the message: its Flowroute id (mdr2-...) or its client_message_id")
        verb.add_argument("--config", "-c", required=True, help="TOML configuration file")
        verb.add_argument("--json", action="store_true", help="JSON lines")
    prune = verbs.add_parser("prune", help="forget attachments past [ledger] retention_days now, and their blobs")
    prune.add_argument("--config", "-c", required=True, help="TOML configuration file")


def _line(row: MediaRow) -> str:
    size = f"{row.size} B" if row.size is not None else "-"
    why = f"  ({row.reason})" if row.reason else ""
    return f"{row.position:>3}  {row.state:<8} {row.mime_type or '-':<16} {size:>12}  {row.file_name or '-'}{why}"


def _link(settings: Settings, row: MediaRow) -> str | None:
    if row.state != "stored" or row.blob_key is None or settings.media.link_key is None:
        return None
    return links.stored_link(settings, settings.media.link_key, row.id, row.blob_key, row.tenant)


def _print(settings: Settings, rows: list[MediaRow], as_json: bool) -> None:
    for row in rows:
        link = _link(settings, row)
        if as_json:
            print(msgspec.json.encode({**msgspec.structs.asdict(row), "link": link}).decode())
        else:
            print(_line(row) + (f"\n     {link}" if link else ""))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    store = await open_store(settings.media)
    if store is None:
        print('smsbridge: [media] store = "off": the bridge keeps no attachments')
        return 1
    ledger = open_from_settings(settings.ledger)
    try:
        if args.verb == "prune":
            removed = await prune_media(ledger, store, timedelta(days=settings.ledger.retention_days))
            print(f"{removed} blob(s) deleted")
            return 0
        rows = await ledger.media_of_message(args.tenant, args.ref)
        if not rows:
            print(f"no attachments recorded for {args.ref!r} of tenant {args.tenant!r} (an SMS, unknown, or pruned)")
            return 1
        if args.verb == "fetch":
            rows = await _fetch_missing(settings, ledger, store, rows)
        _print(settings, rows, args.json)
        return 0 if all(r.state == "stored" for r in rows) else 2
    finally:
        await ledger.close()
        await store.close()


async def _fetch_missing(settings: Settings, ledger: Ledger, store: MediaStore, rows: list[MediaRow]) -> list[MediaRow]:
    async with guarded_session(settings.media.fetch_allowed_networks) as http:
        fetcher = MediaFetcher(http, store, settings.media)
        for row in rows:
            if row.state == "stored" or not row.source_url:
                continue
            try:
                fetched = await fetcher.fetch(row.source_url, row.mime_type, settings.media.max_file_bytes)
            except FetchFailed as exc:
                await ledger.record_media(msgspec.structs.replace(_record(row), reason=exc.reason))
                continue
            await ledger.record_media(msgspec.structs.replace(
                _record(row), state="stored", blob_key=fetched.stored.key, size=fetched.stored.size,
                mime_type=fetched.mime_type, reason=None))
    return [row for ref in dict.fromkeys(r.message_ref for r in rows) for row in await ledger.media_of(ref)]


def _record(row: MediaRow) -> MediaRecord:
    fields = {f: getattr(row, f) for f in MediaRecord.__struct_fields__}
    return MediaRecord(**fields)
