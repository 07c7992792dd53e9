"""`smsbridge db upgrade|prune`: the ledger's schema and retention from a shell."""

from __future__ import annotations

import argparse
from datetime import timedelta

from smsbridge.config import Settings
from smsbridge.ledger import open_from_settings
from smsbridge.ledger.schema import LATEST


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="the ledger's schema and retention")
    db_what = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (("upgrade", "apply pending schema migrations"), ("prune", "forget rows past retention")):
        action = db_what.add_parser(name, help=text)
        action.add_argument("--config", "-c", required=True, help="TOML configuration file")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    ledger = open_from_settings(settings.ledger)
    try:
        if args.db_command == "upgrade":
            applied = await ledger.upgrade()
            print(f"ledger at schema version {LATEST}" + (f" (applied {applied})" if applied else " (nothing to do)"))
        else:
            removed = await ledger.prune(timedelta(days=settings.ledger.retention_days))
            print(f"pruned {removed} message(s) older than {settings.ledger.retention_days:g} days")
    finally:
        await ledger.close()
    return 0
