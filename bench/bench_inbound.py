"""2. Inbound end to end: webhook in → fake PBX HTTP endpoint out, at fixed offered rates and at
the maximum (a fixed number of webhooks sent as fast as 32 connections allow).

Latency is the PBX's arrival time minus the time the receiver took the webhook (`received_at`).
The reference is a minimal pipeline in one process: aiohttp → confirmed publish → consumer →
POST to the same fake PBX → ack, with no rules, no ledger, no retries.
"""

from __future__ import annotations

import time

import aio_pika
from tests.support.ports import free_port

from harness import ENV, Env, PbxSink, percentile, purge, wait_until
from loadgen import Result
from pool import Pool
from report import row
from smsbridge.broker import names

CONNECTIONS = 32
MAX_SECONDS = 600  # only a bound: the maximum run ends when its webhooks are sent


async def _offer(pool: Pool, sink: PbxSink, url: str, rate: float | None, seconds: float,
                 total: int | None) -> tuple[Result, float]:
    """Offer the load, wait until everything accepted arrived (or 120 s), return the achieved rate."""
    sink.reset()
    started = time.monotonic()
    result = await pool.load(url, seconds, rate, CONNECTIONS, total)
    await wait_until(lambda: sink.count >= result.ok, timeout=120)
    elapsed = (sink.last_at if sink.count else time.monotonic()) - started
    return result, sink.count / elapsed if elapsed > 0 else 0.0


async def run(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, *, rates: tuple[int, ...],
              seconds: float, max_messages: int) -> None:
    for stage in ("inbound", "delivery"):  # start from empty stages: nothing left by another benchmark
        await purge(channel, names.stage_queue(env.prefix, stage))
    sink = PbxSink()
    await sink.start()
    env.fresh_ledger()
    port, ref_port = free_port(), free_port()
    real = await env.bridge(env.config("inbound-e2e", port=port, pbx_url=sink.url), "receiver", "inbound",
                            "delivery", name="inbound-e2e")
    ref = await env.script("pipeline", str(ref_port), env.amqp, env.extra_queue("reference-pipeline"), sink.url)
    urls = {"real": f"http://127.0.0.1:{port}/webhooks/flowroute/main/{ENV['BENCH_TOKEN']}",
            "reference": f"http://127.0.0.1:{ref_port}/hook"}
    for url in urls.values():  # warm-up
        await _offer(pool, sink, url, None, 1.0, 50)
    # Fixed rates run for `seconds`; the maximum runs until all `max_messages` are sent, however
    # long a slow machine takes (a time limit there would cut the count, and the label would lie).
    loads: list[tuple[str, float | None, float, int | None]] = [(f"{r}/s offered", r, seconds, None) for r in rates]
    loads.append((f"max ({max_messages} webhooks)", None, MAX_SECONDS, max_messages))
    try:
        for label, rate, duration, total in loads:
            ref_result, ref_rate = await _offer(pool, sink, urls["reference"], rate, duration, total)
            ref_latencies = list(sink.latencies)
            result, achieved = await _offer(pool, sink, urls["real"], rate, duration, total)
            lost = result.ok - sink.count
            row("inbound", f"{label}: delivered/s", achieved, ref_rate, unit="/s")
            row("inbound", f"{label}: p50 latency", percentile(sink.latencies, 0.5) * 1000,
                percentile(ref_latencies, 0.5) * 1000, unit="ms")
            row("inbound", f"{label}: p99 latency", percentile(sink.latencies, 0.99) * 1000,
                percentile(ref_latencies, 0.99) * 1000, unit="ms")
            row("inbound", f"{label}: lost (in {result.ok}, out {sink.count})", lost,
                ref_result.ok - len(ref_latencies), target="0", ok=lost == 0 and result.errors == 0)
    finally:
        await env.stop(real)
        await env.stop(ref)
        await sink.stop()
