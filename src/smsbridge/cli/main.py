"""`smsbridge`: run the bridge, check a configuration, print a webhook URL, send a test text,
simulate Flowroute.

Exit codes: 0 success; 1 the configuration or the operation failed (the message says why);
2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import signal
import sys
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
import msgspec
import structlog

from smsbridge import logs
from smsbridge.bridge import ROLES, Bridge
from smsbridge.cli import db, dlq, media, messages
from smsbridge.config import FlowrouteTarget, HttpTarget, LoggingSettings, Settings
from smsbridge.config_file import ConfigError, check_file, load_settings
from smsbridge.connection import connect
from smsbridge.events import OutboundRequest, encoder
from smsbridge.flowroute.payloads import inbound_payload
from smsbridge.flowroute.simulator import Faults, FlowrouteSimulator
from smsbridge.pbx_client import publish_request, status_queue, watch
from smsbridge.sandbox.flowroute_pbx import FlowroutePbx
from smsbridge.sandbox.pbx import FakePbx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsbridge", description="SMS/MMS bridge between Flowroute and PBXs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the bridge (every role unless --role is given)")
    run.add_argument("--config", "-c", required=True, help="TOML configuration file")
    run.add_argument("--role", action="append", choices=ROLES, help="a role to run; repeat for several")
    run.add_argument("--sandbox", action="store_true",
                     help="try it out: start a demo PBX for every HTTP target on this machine and a Flowroute "
                          "simulator in place of api.flowroute.com")

    check = sub.add_parser("check-config", help="validate a configuration; list every problem")
    check.add_argument("config", help="TOML configuration file")

    url = sub.add_parser("webhook-url", help="print the URL to paste into Flowroute for one SMS configuration")
    url.add_argument("config_id")
    url.add_argument("--config", "-c", required=True, help="TOML configuration file")

    send = sub.add_parser("send", help="publish one outbound request, as a PBX would, and print its statuses")
    send.add_argument("--config", "-c", required=True, help="TOML configuration file (for the broker)")
    send.add_argument("--tenant", required=True)
    send.add_argument("--from-ext", required=True, help="the sending extension")
    send.add_argument("--to", required=True, help="destination number")
    send.add_argument("--body", default="")
    send.add_argument("--from-did", help="send from this DID (the rule must allow it)")
    send.add_argument("--media", action="append", default=[], help="https media URL (repeat for several)")
    send.add_argument("--id", help="client_message_id (default: a new one)")
    send.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a final status (0: do not)")

    db.add_parser(sub)
    messages.add_parser(sub)
    media.add_parser(sub)
    dlq.add_parsers(sub)

    simulate = sub.add_parser("simulate", help="stand-ins for the outside world")
    what = simulate.add_subparsers(dest="what", required=True, metavar="WHAT")
    flowroute = what.add_parser("flowroute", help="run the Flowroute simulator")
    flowroute.add_argument("--host", default="127.0.0.1")
    flowroute.add_argument("--port", type=int, default=8085)
    flowroute.add_argument("--account", action="append", default=[], metavar="KEY:SECRET",
                           help="an account's Access Key and Secret Key (repeat; default sandbox keys)")
    flowroute.add_argument("--sms-per-second", type=int, default=5, help="0 turns the limit off")
    flowroute.add_argument("--mms-per-second", type=int, default=1, help="0 turns the limit off")
    flowroute.add_argument("--latency", type=float, default=0.0, help="seconds added to every send")
    flowroute.add_argument("--jitter", type=float, default=0.0, metavar="SECONDS",
                           help="each send is counted 0 to SECONDS after it arrives, at random (network jitter)")
    flowroute.add_argument("--error-ratio", type=float, default=0.0, help="share of sends answered 503")
    flowroute.add_argument("--drop-ratio", type=float, default=0.0, help="share of sends whose connection drops")
    inbound = what.add_parser("inbound", help="post a Flowroute-shaped inbound text to a webhook URL")
    inbound.add_argument("webhook_url")
    inbound.add_argument("--from", dest="sender", required=True)
    inbound.add_argument("--to", required=True, help="the DID that was texted")
    inbound.add_argument("--body", default="hello from the simulator")
    inbound.add_argument("--media", action="append", default=[], help="media URL (makes it an MMS)")
    inbound.add_argument("--legacy", action="store_true", help="the flat legacy payload shape")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "simulate":
        logs.configure(LoggingSettings(show_pii=True))
        return asyncio.run(simulate_flowroute(args) if args.what == "flowroute" else simulate_inbound(args))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"smsbridge: refusing to start, the configuration has problems:\n{exc}", file=sys.stderr)
        return 1
    if args.command == "webhook-url":
        return webhook_url(settings, args.config_id)
    if args.command == "send":
        return asyncio.run(send(settings, args))
    if args.command == "dlq":
        return asyncio.run(dlq.run(settings, args))
    if args.command == "db":
        return asyncio.run(db.run(settings, args))
    if args.command == "messages":
        return asyncio.run(messages.run(settings, args))
    if args.command == "media":
        return asyncio.run(media.run(settings, args))
    logs.configure(settings.logging, cache=True)
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


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(settings: Settings, roles: Sequence[str], *, sandbox: bool = False) -> int:
    log = structlog.get_logger("smsbridge")
    stop = _stop_event()
    pbxs: list[FakePbx | FlowroutePbx] = []
    simulator: FlowrouteSimulator | None = None
    if sandbox:
        pbxs = await _start_sandbox(settings)
        simulator = await _start_simulator(settings)
        settings = _sandboxed(settings, simulator.url)
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
        if simulator is not None:
            await simulator.stop()
    return 0


LOOPBACK_NETWORK = "127.0.0.0/8"


def _sandboxed(settings: Settings, simulator_url: str) -> Settings:
    """The simulator in place of Flowroute's API; the media it serves and the sandbox PBXs'
    receipt URLs are on loopback, so loopback may be reached for both."""
    media = settings.media
    allowed = [*media.fetch_allowed_networks, LOOPBACK_NETWORK]
    clients = [msgspec.structs.replace(c, dlr_callback_networks=[*c.dlr_callback_networks, LOOPBACK_NETWORK])
               for c in settings.relay_clients]
    return msgspec.structs.replace(
        settings, flowroute=msgspec.structs.replace(settings.flowroute, api_base=simulator_url),
        media=msgspec.structs.replace(media, fetch_allowed_networks=allowed), relay_clients=clients)


async def _start_simulator(settings: Settings) -> FlowrouteSimulator:
    accounts = {c.access_key.reveal(): c.secret_key.reveal() for c in settings.sms_configs}
    simulator = FlowrouteSimulator(accounts, dlr_delay_s=0.5, webhook_resend_interval_s=5.0, fetch_media=True)
    await simulator.start()
    structlog.get_logger("smsbridge").info("sandbox: Flowroute simulator in place of api.flowroute.com",
                                           url=simulator.url,
                                           sample_mms_picture=f"{simulator.url}/_sim/media/sample.png")
    return simulator


async def send(settings: Settings, args: argparse.Namespace) -> int:
    """Publish one request like a PBX; print each status as a JSON line; exit 1 if it failed."""
    request = OutboundRequest(
        tenant=args.tenant, client_message_id=args.id or f"cli-{uuid.uuid4().hex[:12]}", from_extension=args.from_ext,
        to=args.to, body=args.body, from_did=args.from_did, media_urls=tuple(args.media),
    )
    connection = await connect(settings.broker.urls, attempts=3)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        prefix = settings.broker.prefix
        async with status_queue(channel, prefix, request.tenant) as queue:
            await publish_request(channel, prefix, request)
            print(json.dumps({"client_message_id": request.client_message_id, "published": True}), flush=True)
            seen = await watch(queue, request.client_message_id, timeout=args.wait) if args.wait > 0 else []
    finally:
        await connection.close()
    for status in seen:
        print(encoder.encode(status).decode(), flush=True)
    if args.wait > 0 and not seen:
        print(f"smsbridge: no status within {args.wait:g} s (is the bridge running?)", file=sys.stderr)
        return 1
    return 1 if any(s.state == "failed" for s in seen) else 0


async def simulate_flowroute(args: argparse.Namespace) -> int:
    pairs = [a.split(":", 1) for a in args.account] or [["sandbox-access-key", "sandbox-secret-key"]]
    simulator = FlowrouteSimulator({key: secret for key, secret in pairs},
                                   sms_per_second=args.sms_per_second or None,
                                   mms_per_second=args.mms_per_second or None)
    simulator.faults = Faults(latency_s=args.latency, jitter_s=args.jitter, error_ratio=args.error_ratio,
                              drop_ratio=args.drop_ratio)
    stop = _stop_event()
    await simulator.start(args.host, args.port)
    # The number of accounts, never their Access Keys: a key is half of a credential.
    structlog.get_logger("smsbridge").info("Flowroute simulator listening", url=simulator.url, accounts=len(pairs))
    await stop.wait()
    await simulator.stop()
    return 0


async def simulate_inbound(args: argparse.Namespace) -> int:
    media = [{"url": url, "file_name": url.rsplit("/", 1)[-1],
              "mime_type": mimetypes.guess_type(url)[0] or "image/jpeg"} for url in args.media]
    payload = inbound_payload(sender=args.sender, did=args.to, body=args.body, media=media,
                              shape="legacy" if args.legacy else "jsonapi")
    async with aiohttp.ClientSession() as session, session.post(args.webhook_url, json=payload) as response:
        print(f"{response.status} {await response.text()}")
        return 0 if response.status == 200 else 1


async def _start_sandbox(settings: Settings) -> list[FakePbx | FlowroutePbx]:
    started: list[FakePbx | FlowroutePbx] = []
    for target in settings.pbx_targets:
        parts = urlsplit(target.url) if isinstance(target, HttpTarget | FlowrouteTarget) else None
        if parts is None or parts.hostname not in LOOPBACK:
            continue
        if isinstance(target, FlowrouteTarget):
            started.append(await _start_flowroute_pbx(target.tenant, parts.hostname or "127.0.0.1",
                                                      parts.port or 80, parts.path or "/"))
            continue
        assert isinstance(target, HttpTarget)
        expect = (target.auth_header, target.auth_value.reveal()) if target.auth_value else None
        pbx = FakePbx(path=parts.path or "/", expect_auth=expect)
        await pbx.start(parts.hostname or "127.0.0.1", parts.port or 80)
        structlog.get_logger("smsbridge").info("sandbox: demo PBX listening", tenant=target.tenant, url=pbx.url)
        started.append(pbx)
    return started


async def _start_flowroute_pbx(tenant: str, host: str, port: int, path: str) -> FlowroutePbx:
    """A demo PBX that speaks only Flowroute, at the target's URL."""
    pbx = FlowroutePbx(path=path)
    await pbx.start(host, port)
    structlog.get_logger("smsbridge").info("sandbox: demo PBX that speaks Flowroute listening", tenant=tenant,
                                           webhook=pbx.webhook_url)
    return pbx
