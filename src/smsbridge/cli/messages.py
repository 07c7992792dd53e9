"""`smsbridge messages`: the message history from a shell (did my text go out?)."""

from __future__ import annotations

import argparse
from datetime import datetime

import msgspec

from smsbridge.config import Settings
from smsbridge.ledger import MessageRow, open_from_settings
from smsbridge.numbers import mask


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    messages = sub.add_parser("messages", help="message history: did my text go out?")
    messages.add_argument("--config", "-c", required=True, help="TOML configuration file")
    messages.add_argument("--tenant")
    messages.add_argument("--number", help="E.164 number, sender or recipient")
    messages.add_argument("--state", help="queued, received, accepted, sent, buffered, delivered, failed")
    messages.add_argument("--since", type=datetime.fromisoformat, help="ISO 8601 time")
    messages.add_argument("--until", type=datetime.fromisoformat, help="ISO 8601 time")
    messages.add_argument("--limit", type=int, default=20)
    messages.add_argument("--before", type=int, help="show rows older than this id (the next page)")
    messages.add_argument("--id", dest="ref", help="one message (ledger id, mdr id or client id) with its history")
    messages.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    messages.add_argument("--show-pii", action="store_true", help="full numbers and bodies")


def _line(row: MessageRow, show_pii: bool) -> str:
    number = (lambda n: n) if show_pii else mask
    who = row.client_message_id or row.mdr_id or ""
    return (f"{row.id:>7}  {row.created_at:%Y-%m-%d %H:%M:%S}  {row.direction:<8} {row.tenant:<10} "
            f"{number(row.from_number):>14} → {number(row.to_number):<14} {row.state:<9} {who}"
            + (f"  ({row.reason})" if row.state == "failed" and row.reason else ""))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    ledger = open_from_settings(settings.ledger)
    try:
        if args.ref:
            row = await ledger.find(args.ref, tenant=args.tenant)
            if row is None:
                print(f"no message {args.ref!r} (it may have been pruned)")
                return 1
            history = await ledger.history(row.id)
            if args.json:
                print(msgspec.json.encode({"message": row, "history": history}).decode())
                return 0
            print(_line(row, args.show_pii))
            for h in history:
                dlr = f" DLR {h.dlr_code}" if h.dlr_code else ""
                print(f"         {h.at:%Y-%m-%d %H:%M:%S}  {h.state}{dlr}" + (f"  {h.reason}" if h.reason else ""))
            return 0
        rows = await ledger.search(tenant=args.tenant, number=args.number, state=args.state, since=args.since,
                                   until=args.until, limit=args.limit, before_id=args.before)
    finally:
        await ledger.close()
    for row in rows:
        print(msgspec.json.encode(row).decode() if args.json else _line(row, args.show_pii))
    if len(rows) == args.limit and not args.json:
        print(f"(more: --before {rows[-1].id})")
    return 0
