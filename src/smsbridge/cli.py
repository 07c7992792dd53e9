"""`smsbridge`: run the bridge, check a configuration, print a webhook URL.

Exit codes: 0 success; 1 the configuration or the operation failed (the message says why);
2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import structlog

from smsbridge import logs
from smsbridge.config import HttpTarget, Settings
from smsbridge.configload import ConfigError, check_file, load_settings
from smsbridge.runtime import ROLES, Bridge
from smsbridge.sandbox.pbx import FakePbx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsbridge", description="SMS/MMS bridge between Flowroute and PBXs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the bridge (every role unless --role is given)")
    run.add_argument("--config", "-c", required=True, help="TOML configuration file")
    run.add_argument("--role", action="append", choices=ROLES, help="a role to run; repeat for several")
    run.add_argument("--sandbox", action="store_true",
                     help="also start a demo PBX for every HTTP target on this machine (for trying it out)")

    check = sub.add_parser("check-config", help="validate a configuration; list every problem")
    check.add_argument("config", help="TOML configuration file")

    url = sub.add_parser("webhook-url", help="print the URL to paste into Flowroute for one SMS configuration")
    url.add_argument("config_id")
    url.add_argument("--config", "-c", required=True, help="TOML configuration file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"smsbridge: refusing to start, the configuration has problems:\n{exc}", file=sys.stderr)
        return 1
    if args.command == "webhook-url":
        return webhook_url(settings, args.config_id)
    logs.configure(settings.logging)
    return asyncio.run(serve(settings, args.role or ROLES, sandbox=args.sandbox))


def check_config(path: str) -> int:
    settings, problems = check_file(path)
    if problems or settings is None:
        print(f"{path}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{path}: ok ({len(settings.sms_configs)} SMS configuration(s), "
          f"{len(settings.inbound_rules)} inbound rule(s), {len(settings.pbx_targets)} PBX target(s))")
    return 0


def webhook_url(settings: Settings, config_id: str) -> int:
    config = settings.sms_config(config_id)
    if config is None:
        known = ", ".join(c.id for c in settings.sms_configs) or "none"
        print(f"smsbridge: no SMS configuration '{config_id}' (known: {known})", file=sys.stderr)
        return 1
    print(settings.webhook_url(config))
    return 0


async def serve(settings: Settings, roles: Sequence[str], *, sandbox: bool = False) -> int:
    log = structlog.get_logger("smsbridge")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pbxs = await _start_sandbox(settings) if sandbox else []
    bridge = Bridge(settings, roles)
    try:
        await bridge.start()
        if sandbox and "receiver" in bridge.roles:
            for config in settings.sms_configs:
                log.info("sandbox: post Flowroute webhooks here", config=config.id,
                         url=f"{bridge.receiver_url}/webhooks/flowroute/{config.id}/<token>")
        await stop.wait()
        log.info("shutting down", drain_timeout_s=settings.drain_timeout_s)
    finally:
        await bridge.stop()
        for pbx in pbxs:
            await pbx.stop()
    return 0


async def _start_sandbox(settings: Settings) -> list[FakePbx]:
    started = []
    for target in settings.pbx_targets:
        if not isinstance(target, HttpTarget):
            continue
        parts = urlsplit(target.url)
        if parts.hostname not in LOOPBACK:
            continue
        expect = (target.auth_header, target.auth_value.reveal()) if target.auth_value else None
        pbx = FakePbx(path=parts.path or "/", expect_auth=expect)
        await pbx.start(parts.hostname or "127.0.0.1", parts.port or 80)
        structlog.get_logger("smsbridge").info("sandbox: demo PBX listening", tenant=target.tenant, url=pbx.url)
        started.append(pbx)
    return started
