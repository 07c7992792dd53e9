"""7. Many accounts: 100 Flowroute accounts at 5 SMS/s each, through 1, 2 and 4 dispatcher processes.

Every account has its own credentials, SMS configuration and dispatch queue (single active
consumer), and the Flowroute simulator enforces Flowroute's limits per account. Each account's
queue is preloaded with `5 × seconds + 1` requests (recorded in the ledger, as the outbound worker
leaves them), then the dispatchers start side by side. Figures: the aggregate rate (the sum of the
accounts' rates, each from the simulator's own attempt times, first to last) against 500/s, the
slowest account against 5/s, the 429s, the most attempts any account saw in any 1000 ms, and how
the accounts were spread over the processes (whichever subscribes first to an account's queue
sends for it; the others stand by for it).
"""

from __future__ import annotations

from pathlib import Path

import aio_pika
from tests.support.ports import free_port

import harness
from bench_dispatch import rate
from harness import Env, preload, record_requests, together, wait_until
from report import Row
from smsbridge.broker import names, topology
from smsbridge.events import DispatchRequest, encoder
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.testing.config import Env as Secret
from smsbridge.testing.config import bridge_document, merge, write
from workloads import BODY

LIMIT = 5
WINDOW_S = 1.0


def account(n: int) -> str:
    return f"acct{n:03d}"


def access_key(n: int) -> str:
    return f"AK-{account(n)}"


def secrets(count: int) -> dict[str, str]:
    """The environment the configuration's secret references point to (`BENCH_ACCT_<n>_*`)."""
    env: dict[str, str] = {}
    for n in range(count):
        env |= {f"BENCH_ACCT_{n}_AK": access_key(n), f"BENCH_ACCT_{n}_SK": f"SK-{account(n)}",
                f"BENCH_ACCT_{n}_TOKEN": f"bench-acct-token-{n:03d}-0123456789abcdef"}
    return env


def did(n: int) -> str:
    return f"+1206556{n:04d}"


def config(env: Env, simulator: FlowrouteSimulator, count: int) -> Path:
    """The benchmarks' dispatcher configuration (as `Env.config` writes it), with `count` SMS
    configurations, one per account."""
    doc = bridge_document(amqp_url=env.amqp, prefix=env.prefix, ledger_url=env.ledger_url, port=free_port(),
                          secrets="BENCH", api_base=simulator.url, account="bench")
    configs = [{"id": f"cfg-{n:03d}", "tenant": "acme", "account": account(n), "dids": [did(n)],
                "access_key": Secret(f"BENCH_ACCT_{n}_AK"), "secret_key": Secret(f"BENCH_ACCT_{n}_SK"),
                "webhook_token": Secret(f"BENCH_ACCT_{n}_TOKEN"), "sms_per_second": LIMIT, "mms_per_second": 1}
               for n in range(count)]
    return write(env.workdir / "accounts.toml", merge(doc, {
        "logging": {"format": None, "level": "info"},  # production default, as the other benchmarks
        "flowroute": {"request_dlrs": False, "timeout_s": None},
        "sms_configs": configs, "inbound_rules": [], "outbound_rules": [],
    }))


def requests(count: int, per_account: int) -> list[DispatchRequest]:
    """Account by account in turn, so each queue fills alike."""
    return [DispatchRequest(tenant="acme", config_id=f"cfg-{n:03d}", client_message_id=f"acct-{n}-{k}",
                            from_extension="101", from_=did(n), to=f"+1425555{k:04d}", body=BODY)
            for k in range(per_account) for n in range(count)]


async def _queue(env: Env, channel: aio_pika.abc.AbstractChannel, all_requests: list[DispatchRequest]) -> None:
    for n in {int(r.config_id[4:]) for r in all_requests}:
        queue = names.stage_queue(env.prefix, names.dispatch_stage(account(n)))
        await preload(channel, queue, (encoder.encode(r) for r in all_requests if r.config_id == f"cfg-{n:03d}"))


def carried(env: Env, processes: int) -> list[int]:
    """How many accounts each process sent for (its first message per account logs it)."""
    counts = []
    for i in range(processes):
        text = (env.workdir / f"accounts-{processes}-{i}.log").read_text()
        counts.append(len({line.split('"account":"', 1)[1].split('"', 1)[0] for line in text.splitlines()
                           if "counting the attempts before us" in line}))
    return counts


async def one_run(env: Env, channel: aio_pika.abc.AbstractChannel, *, count: int, seconds: float,
                  processes: int) -> list[Row]:
    simulator = FlowrouteSimulator({access_key(n): f"SK-{account(n)}" for n in range(count)},
                                   sms_per_second=LIMIT, mms_per_second=1)
    await simulator.start()
    per_account = int(LIMIT * seconds) + 1
    try:
        env.fresh_ledger()
        all_requests = requests(count, per_account)
        await record_requests(env.ledger_url, all_requests)
        await _queue(env, channel, all_requests)
        path = config(env, simulator, count)
        await together(*(env.bridge(path, "dispatcher", name=f"accounts-{processes}-{i}")
                          for i in range(processes)))
        total = count * per_account
        await wait_until(lambda: sum(1 for r in simulator.requests if r["status"] == 202) >= total,
                         timeout=seconds * 4 + 60)
        await env.stop_all()
        return figures(simulator, env, count, processes, per_account)
    finally:
        await simulator.stop()


def figures(simulator: FlowrouteSimulator, env: Env, count: int, processes: int, per_account: int) -> list[Row]:
    rates = [rate(simulator, access_key(n)) for n in range(count)]
    aggregate, slowest = sum(rates), min(rates)
    throttled = simulator.statuses().count(429)
    most = max(simulator.max_in_window(access_key(n)) for n in range(count))
    accepted = sum(1 for r in simulator.requests if r["status"] == 202)
    spread = carried(env, processes)
    label = f"{count} accounts, {processes} dispatcher{'s' if processes > 1 else ''}"
    return [
        Row("accounts", f"{label}: aggregate sent/s", aggregate, LIMIT * count, unit="/s", target="ratio >= 0.95",
            ok=aggregate / (LIMIT * count) >= 0.95),
        Row("accounts", f"{label}: slowest account sent/s", slowest, LIMIT, unit="/s"),
        Row("accounts", f"{label}: 429 answers", throttled, None, target="0", ok=throttled == 0),
        Row("accounts", f"{label}: max attempts in 1 s, any account", most, LIMIT, target="<= 5", ok=most <= LIMIT),
        Row("accounts", f"{label}: accepted of {count * per_account}", accepted, count * per_account,
            target=str(count * per_account), ok=accepted == count * per_account),
        Row("accounts", f"{label}: accounts per process ({'/'.join(map(str, spread))})", max(spread), count),
    ]


async def run(env: Env, channel: aio_pika.abc.AbstractChannel, *, count: int, seconds: float,
              processes: tuple[int, ...]) -> None:
    harness.ENV.update(secrets(count))
    accounts = [account(n) for n in range(count)]
    sibling = env.sibling("accounts")
    await topology.declare(channel, sibling.prefix, delivery_limit=20, accounts=accounts)
    try:
        for number in processes:
            for figure in await one_run(sibling, channel, count=count, seconds=seconds, processes=number):
                figure.print()
    finally:
        await sibling.stop_all()
        await topology.delete(channel, sibling.prefix, accounts=accounts)
