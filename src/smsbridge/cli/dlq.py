"""`smsbridge dlq list|show|replay|purge`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings
from smsbridge.connection import connect
from smsbridge.dlq import DeadLetter, DeadLetterQueue, Filter, format_row, parse_age


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = sub.add_parser("dlq", help="inspect, replay and purge the dead-letter queue")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    helps = {"list": "list dead letters, one line each, in queue order",
             "show": "headers and body of matching dead letters",
             "replay": "put matching dead letters back at their stage, attempts reset",
             "purge": "delete matching dead letters (asks first unless --yes)"}
    for name, text in helps.items():
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", "-c", required=True, help="TOML configuration file")
        action.add_argument("--stage", help="inbound, delivery, outbound, dispatch.<account>, receiver")
        action.add_argument("--reason", help="a reason code (e.g. pbx_400) or words from the reason")
        action.add_argument("--older-than", type=parse_age, metavar="AGE", help="e.g. 30m, 2h, 7d")
        action.add_argument("--id", dest="message_id", help="one message id")
        action.add_argument("--limit", type=int, default=None if name in ("replay", "purge") else 50)
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask")
        if name == "list":
            action.add_argument("--json", action="store_true", help="one JSON object per line")


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(stage=args.stage, reason=args.reason, older_than_s=args.older_than, message_id=args.message_id)


def _progress(verb: str) -> object:
    def show(count: int) -> None:
        end = "\r" if sys.stderr.isatty() else "\n"
        if sys.stderr.isatty() or count % 100 == 0:
            print(f"{verb} {count}...", end=end, file=sys.stderr, flush=True)
    return show


async def run(settings: Settings, args: argparse.Namespace) -> int:
    connection = await connect(settings.broker.urls, attempts=3)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = DeadLetterQueue(channel, settings, Publisher(channel, timeout=settings.broker.publish_timeout_s))
        return await _dispatch(queue, args)
    finally:
        await connection.close()


async def _dispatch(queue: DeadLetterQueue, args: argparse.Namespace) -> int:
    wanted = _filter(args)
    if args.dlq_command in ("list", "show"):
        found, _ = await queue.walk(wanted, limit=args.limit)
        for dead in found:
            if args.dlq_command == "show":
                _show(dead)
            elif args.json:
                print(json.dumps({"message_id": dead.message_id, "stage": dead.stage, "code": dead.code,
                                  "reason": dead.reason, "attempts": dead.attempts, "dead_at_ms": dead.dead_at_ms}))
            else:
                print(format_row(dead))
        print(f"{len(found)} dead letter(s) matched", file=sys.stderr)
        return 0
    if args.dlq_command == "purge" and not args.yes:
        matching, _ = await queue.walk(wanted, limit=args.limit)
        prompt = f"Delete {len(matching)} dead letter(s) for good? [y/N] "
        answer = await asyncio.to_thread(input, prompt) if sys.stdin.isatty() else ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted (use --yes to skip this question)", file=sys.stderr)
            return 1
    act = queue.replay if args.dlq_command == "replay" else _delete
    verb = "replayed" if args.dlq_command == "replay" else "purged"
    done, kept = await queue.walk(wanted, act=act, limit=args.limit, progress=_progress(verb))  # type: ignore[arg-type]
    print(f"{verb} {len(done)} dead letter(s)" + (f"; {len(kept)} could not be replayed and stay "
                                                    "(still unusable with this configuration)" if kept else ""),
          file=sys.stderr)
    return 0 if not kept else 1


async def _delete(dead: DeadLetter) -> bool:
    return True


def _show(dead: DeadLetter) -> None:
    print(f"--- {dead.message_id or '(no id)'}  stage={dead.stage}  code={dead.code}  attempts={dead.attempts}")
    print(f"reason: {dead.reason}")
    for key, value in sorted(dead.headers.items()):
        print(f"  {key}: {value!r}")
    try:
        print(json.dumps(json.loads(dead.body), indent=2, ensure_ascii=False))
    except ValueError:
        print(dead.body.decode(errors="replace"))
