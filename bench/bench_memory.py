"""5. Memory: the RSS of each role, alone in its process, before and after a run of messages.

"Before" is taken after a warm-up (a tenth of the run, at most 1,000 messages), once imports,
connection pools and caches exist; "after" once the whole run is through. A role that keeps
something per message grows; one that does not stays flat. Target: after within 10% of before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aio_pika

import workloads
from harness import ENV, Env, PbxSink, free_port, preload, purge, rss_mb, wait_for_depth, wait_until
from pool import Pool
from report import row
from smsbridge.broker import names
from smsbridge.events import encoder
from smsbridge.flowroute.simulator import FlowrouteSimulator

Feed = Callable[[int], Awaitable[None]]  # send n more messages and wait until they are through


async def _measure(env: Env, role: str, config_name: str, messages: int, feed: Feed, **config: object) -> None:
    proc = await env.bridge(env.config(config_name, **config), role, name=f"memory-{role}")  # type: ignore[arg-type]
    try:
        await feed(min(1000, max(1, messages // 10)))
        before = rss_mb(proc.pid)
        await feed(messages)
        after = rss_mb(proc.pid)
    finally:
        await env.stop(proc)
    row("memory", f"{role}: RSS after {messages:,} (before: ref)", after, before, unit="MB",
        target="ratio <= 1.10", ok=after <= before * 1.10)


async def run(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, *, receiver_messages: int,
              worker_messages: int) -> None:
    prefix = env.prefix
    await env.fresh_ledger()

    async def through_queue(queue: str, bodies: Callable[[int], object], output: str) -> Feed:
        done = 0

        async def feed(n: int) -> None:
            nonlocal done
            await preload(channel, queue, bodies(n))  # type: ignore[arg-type]
            done += n
            await wait_for_depth(channel, output, done, timeout=3600)
        return feed

    # receiver: webhooks from the load generator
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/flowroute/main/{ENV['BENCH_TOKEN']}"

    async def webhooks(n: int) -> None:
        await pool.load(url, 3600, None, 32, n)
    await _measure(env, "receiver", "memory-receiver", receiver_messages, webhooks, port=port)
    await purge(channel, names.stage_queue(prefix, "inbound"))

    # inbound: preloaded texts → deliveries queue
    feed = await through_queue(names.stage_queue(prefix, "inbound"), workloads.inbound_messages,
                               names.stage_queue(prefix, "delivery"))
    await _measure(env, "inbound", "memory-inbound", worker_messages, feed)
    await purge(channel, names.stage_queue(prefix, "delivery"))

    # delivery: preloaded deliveries → the fake PBX
    sink = PbxSink()
    await sink.start()

    async def deliveries(n: int) -> None:
        target = sink.count + n
        await preload(channel, names.stage_queue(prefix, "delivery"), workloads.deliveries(n))
        await wait_until(lambda: sink.count >= target, timeout=3600, step=0.2)
    try:
        await _measure(env, "delivery", "memory-delivery", worker_messages, deliveries, pbx_url=sink.url)
    finally:
        await sink.stop()

    # outbound: preloaded requests → the account's dispatch queue
    dispatch_queue = names.stage_queue(prefix, names.dispatch_stage("bench"))
    await purge(channel, dispatch_queue)
    feed = await through_queue(names.stage_queue(prefix, "outbound"), workloads.outbound_requests, dispatch_queue)
    await _measure(env, "outbound", "memory-outbound", worker_messages, feed)
    await purge(channel, dispatch_queue)

    # dispatcher: preloaded dispatch requests → the simulator, limits off
    simulator = FlowrouteSimulator({"AK-bench": "SK-bench"}, sms_per_second=None, mms_per_second=None)
    await simulator.start()

    async def dispatches(n: int) -> None:
        target = len(simulator.requests) + n
        await preload(channel, dispatch_queue,
                      (encoder.encode(r) for r in workloads.dispatch_requests(n)))
        await wait_until(lambda: len(simulator.requests) >= target, timeout=3600, step=0.2)
    try:
        await _measure(env, "dispatcher", "memory-dispatcher", worker_messages, dispatches,
                       api_base=simulator.url, sms_rate=200)
    finally:
        await simulator.stop()
