"""5. Memory: the RSS of each role, each alone in its own process, before and after a run of messages.

The five roles run at once, as two pipelines, so every role sees every message and the run
uses both cores: webhooks from the load generator → receiver → inbound → delivery → fake PBX,
and outbound requests (published as a PBX publishes them) → outbound → dispatcher → the
Flowroute simulator with its limits off.

The warm-up is fed as fast as possible (a tenth of the run, at most 2,000 messages through both
pipelines), so that imports, connection pools and caches exist. Then every stage queue gets
twice its consumer's prefetch at once, so every role has held a full window of in-flight
messages once: what that costs is part of "before" (a role fast enough to keep up with the
warm-up would otherwise never fill its window before, only during the run). "After" is taken
once the whole run has come out at both ends. The run itself is fed at a fixed rate at both ends
(RATE), more than two cores sustain with every role running: fed as fast as possible, texts
would only pile up in RabbitMQ in front of the slowest role, and the dispatcher's POSTs would
queue in the simulator (it shares this event loop) past Flowroute's timeout. A role that keeps
something per message grows; one that does not stays flat. Target: after within 10% of before.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
from tests.support.ports import free_port

import workloads
from harness import ENV, Env, PbxSink, paced, preload, rss_mb, together, wait_until
from pool import Pool
from report import row
from smsbridge.broker import names
from smsbridge.events import encoder
from smsbridge.flowroute.simulator import FlowrouteSimulator

ROLES = ("receiver", "inbound", "delivery", "outbound", "dispatcher")
UNLIMITED_RATE = 500  # SMS/s configured for the account (its prefetch is twice that)
RATE = 350  # texts/s offered at each end during the run
WARM_UP = 2 * 2 * UNLIMITED_RATE  # twice the largest prefetch window (the dispatcher's)
ORIGIN = names.request_routing_key("acme")  # the workloads' tenant, as the requests exchange gives it
PREFETCH = 64  # the other roles' (the benchmark configuration's [broker] prefetch)


async def run(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, *, messages: int) -> None:
    env.fresh_ledger()
    sink = PbxSink()
    simulator = FlowrouteSimulator({"AK-bench": "SK-bench"}, sms_per_second=None, mms_per_second=None)
    await sink.start()
    await simulator.start()
    port = free_port()
    webhook_url = f"http://127.0.0.1:{port}/webhooks/flowroute/main/{ENV['BENCH_TOKEN']}"
    outbound_queue = names.stage_queue(env.prefix, "outbound")
    try:
        configs = {role: env.config(f"memory-{role}", port=port if role == "receiver" else 0, pbx_url=sink.url,
                                    api_base=simulator.url, sms_rate=UNLIMITED_RATE) for role in ROLES}
        processes = await together(*(env.bridge(configs[role], role, name=f"memory-{role}") for role in ROLES))
        procs = dict(zip(ROLES, processes, strict=True))

        async def drained(texts: int, sends: int) -> None:
            """Wait until the fake PBX has `texts` in all and the simulator `sends`."""
            if not await wait_until(lambda: sink.count >= texts and len(simulator.requests) >= sends,
                                    timeout=3600, step=0.2):
                raise RuntimeError("the pipelines did not drain")

        async def feed(n: int, rate: float | None) -> None:
            """n texts in at both ends (None: as fast as they go); wait until all n came out at both ends."""
            texts, sends = sink.count + n, len(simulator.requests) + n
            requests = workloads.outbound_requests(n)
            result, _ = await asyncio.gather(
                pool.load(webhook_url, 3600, rate, 32, n),
                (paced(channel, outbound_queue, requests, rate, origin_key=ORIGIN) if rate
                 else preload(channel, outbound_queue, requests, origin_key=ORIGIN)))
            if result.ok != n:
                raise RuntimeError(f"the receiver accepted {result.ok} of {n} webhooks")
            await drained(texts, sends)

        warm_up = min(WARM_UP, max(1, messages // 10))

        async def fill() -> None:
            """Twice each consumer's prefetch straight into its queue at once, so that every window is
            full once before "before", however fast the roles drain the warm-up."""
            small, large = 2 * PREFETCH, warm_up
            texts, sends = sink.count + 2 * small, len(simulator.requests) + small + large
            await asyncio.gather(
                preload(channel, names.stage_queue(env.prefix, "inbound"), workloads.inbound_messages(small)),
                preload(channel, names.stage_queue(env.prefix, "delivery"), workloads.deliveries(small)),
                preload(channel, outbound_queue, workloads.outbound_requests(small), origin_key=ORIGIN),
                preload(channel, names.stage_queue(env.prefix, names.dispatch_stage("bench")),
                        (encoder.encode(r) for r in workloads.dispatch_requests(large))))
            await drained(texts, sends)

        await feed(warm_up, None)
        await fill()
        before = {role: rss_mb(proc.pid) for role, proc in procs.items()}
        started = time.monotonic()
        await feed(messages, RATE)
        seconds = time.monotonic() - started
        after = {role: rss_mb(proc.pid) for role, proc in procs.items()}
        for role in ROLES:
            row("memory", f"{role}: RSS after {messages:,} (before: ref)", after[role], before[role], unit="MB",
                target="ratio <= 1.10", ok=after[role] <= before[role] * 1.10)
        row("memory", f"both pipelines: {messages:,} each way, seconds", seconds, None, unit="s")
    finally:
        await env.stop_all()
        await simulator.stop()
        await sink.stop()
