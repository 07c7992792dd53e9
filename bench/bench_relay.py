"""4. The Flowroute-compatible send API (issue 19).

- Accepted sends per second through `/flowroute/v2.2/messages`, against the same receiver's
  webhook rate in the same run (same process, same connections, alternating): a relayed send
  costs a ledger row and a confirmed publish where a webhook costs only the publish.
- Three PBX clients (three relay credentials of one tenant) sending through one Flowroute
  account at its 5 SMS/s: the rate the simulator saw as a fraction of the limit, and its 429s.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aio_pika
import aiohttp
from tests.support.ports import free_port

from bench_dispatch import KEYS, LIMIT, accepted, rate
from bench_receiver import CONNECTIONS, merge
from harness import ENV, Env, cpu_s, purge, wait_until
from loadgen import Result, relay_payload
from pool import Pool
from report import row
from smsbridge.broker import names
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.workers.relay_dlr import STAGE

CLIENTS = 3
RELAY_CLIENT = """
[[relay_clients]]
tenant = "acme"
access_key = "bench-pbx-{n}"
secret_key = {{ env = "BENCH_RELAY_{n}" }}
extension = "pbx{n}"
"""

# Signed ids: a send without an Idempotency-Key (as FusionPBX and FreePBX send) is answered once
# RabbitMQ has it, its row written by the outbound stage.
RELAY_IDS = """
[relay]
id_key = { env = "BENCH_RELAY_ID_KEY" }
"""


def auth(n: int) -> str:
    return "Basic " + base64.b64encode(f"bench-pbx-{n}:{ENV[f'BENCH_RELAY_{n}']}".encode()).decode()


def relay_config(env: Env, name: str, **options: object) -> tuple[Path, int]:
    port = free_port()
    path = env.config(name, port=port, **options)  # type: ignore[arg-type]
    path.write_text(path.read_text() + "".join(RELAY_CLIENT.format(n=n) for n in range(CLIENTS)) + RELAY_IDS)
    return path, port


async def throughput(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, seconds: float,
                     rounds: int) -> None:
    results: dict[str, list[Result]] = {"relay": [], "webhook": []}
    cpu = {"relay": 0.0, "webhook": 0.0}
    env.fresh_ledger()
    for number in range(rounds):
        config, port = relay_config(env, f"relay-{number}")
        proc = await env.bridge(config, "receiver", name=f"relay-{number}")
        base = f"http://127.0.0.1:{port}"
        targets = {"relay": (f"{base}/flowroute/v2.2/messages", auth(0)),
                   "webhook": (f"{base}/webhooks/flowroute/main/{ENV['BENCH_TOKEN']}", None)}
        for url, key in targets.values():
            await pool.load(url, 1.0, None, CONNECTIONS, relay_auth=key)
        for name in (list(targets) if number % 2 == 0 else list(reversed(targets))):
            url, key = targets[name]
            before = cpu_s(proc.pid)
            results[name].append(await pool.load(url, seconds, None, CONNECTIONS, relay_auth=key))
            cpu[name] += cpu_s(proc.pid) - before
        await env.stop(proc)
        for stage in ("inbound", "outbound"):  # nobody consumes them here
            await purge(channel, names.stage_queue(env.prefix, stage))
    ours, webhooks = merge(results["relay"]), merge(results["webhook"])
    rps, hook_rps = ours.ok / ours.seconds, webhooks.ok / webhooks.seconds
    row("relay", f"sends accepted/s ({CONNECTIONS} connections)", rps, hook_rps, unit="/s",
        target=">= 0.8 x webhooks", ok=rps >= 0.8 * hook_rps)
    row("relay", "CPU per send", cpu["relay"] / ours.sent * 1e6, cpu["webhook"] / webhooks.sent * 1e6, unit="us")
    row("relay", "non-202 answers", ours.errors, webhooks.errors, target="0", ok=ours.errors == 0)


async def three_clients(env: Env, seconds: float) -> None:
    simulator = FlowrouteSimulator(KEYS, sms_per_second=LIMIT, mms_per_second=1)
    await simulator.start()
    per_client = int(LIMIT * seconds / CLIENTS) + 1
    messages = per_client * CLIENTS
    try:
        env.fresh_ledger()
        config, port = relay_config(env, "relay-limited", api_base=simulator.url, sms_rate=LIMIT)
        proc = await env.bridge(config, "receiver", "outbound", "dispatcher", name="relay-limited")
        url = f"http://127.0.0.1:{port}/flowroute/v2.2/messages"
        sent = await asyncio.gather(*(client_sends(url, per_client, auth(n)) for n in range(CLIENTS)))
        await wait_until(lambda: accepted(simulator, "AK-bench") >= messages, timeout=seconds * 2 + 60)
        await env.stop(proc)
        achieved, throttled = rate(simulator, "AK-bench"), simulator.statuses().count(429)
        label = f"5/s, {CLIENTS} PBX clients"
        row("relay", f"{label}: sent/s vs limit", achieved, LIMIT, unit="/s", target="ratio >= 0.95",
            ok=achieved / LIMIT >= 0.95)
        row("relay", f"{label}: 429 answers", throttled, None, target="0", ok=throttled == 0)
        row("relay", f"{label}: accepted of {messages}", accepted(simulator, "AK-bench"), None,
            target=str(messages), ok=accepted(simulator, "AK-bench") == messages and sum(sent) == messages)
    finally:
        await simulator.stop()


async def client_sends(url: str, count: int, key: str) -> int:
    """One PBX client: `count` sends, one after the other, as fast as they are answered."""
    ok = 0
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            async with session.post(url, data=relay_payload(n, 0), headers={
                    "Content-Type": "application/json", "Authorization": key}) as response:
                ok += response.status == 202
    return ok


async def run(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, *, seconds: float, rounds: int,
              limited_seconds: float) -> None:
    await throughput(env, pool, channel, seconds, rounds)
    await three_clients(env, limited_seconds)
    await purge(channel, names.stage_queue(env.prefix, STAGE))
