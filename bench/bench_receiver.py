"""1. Receiver throughput: the real receiver against a minimal one, same load, same payloads.

The minimal reference is aiohttp + one msgspec decode + one confirmed aio-pika publish. Both run
as their own process, both stay up, and the load alternates between them in rounds, so a drift
of the machine or the broker during the run touches both alike. Besides the rate, each side's
CPU time per webhook (from /proc) is reported: it does not depend on how the two cores were
shared during the round, so it moves far less from run to run than the rate does.
"""

from __future__ import annotations

import aio_pika

from harness import ENV, Env, cpu_s, free_port, percentile, purge
from loadgen import Result
from pool import Pool
from report import row
from smsbridge.broker import names

CONNECTIONS = 32


async def run(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, *, seconds: float,
              rounds: int) -> None:
    ref_port = free_port()
    ref_queue = env.extra_queue("reference-inbound")
    ref = await env.script("receiver", str(ref_port), env.amqp, ref_queue)
    port = free_port()
    real = await env.bridge(env.config("receiver", port=port), "receiver", name="receiver")
    targets = {"reference": f"http://127.0.0.1:{ref_port}/hook",
               "real": f"http://127.0.0.1:{port}/webhooks/flowroute/main/{ENV['BENCH_TOKEN']}"}
    pids = {"reference": ref.pid, "real": real.pid}
    results: dict[str, list[Result]] = {"reference": [], "real": []}
    cpu = {"reference": 0.0, "real": 0.0}
    for url in targets.values():  # warm both up: connections, caches, the broker's queues
        await pool.load(url, 1.0, None, CONNECTIONS)
    for _ in range(rounds):
        for name, url in targets.items():
            before = cpu_s(pids[name])
            results[name].append(await pool.load(url, seconds, None, CONNECTIONS))
            cpu[name] += cpu_s(pids[name]) - before
    await env.stop(real)
    await env.stop(ref)
    await purge(channel, names.stage_queue(env.prefix, "inbound"))  # nobody consumes them here
    await purge(channel, ref_queue)
    ours, reference = merge(results["real"]), merge(results["reference"])
    rps, ref_rps = ours.ok / ours.seconds, reference.ok / reference.seconds
    row("receiver", f"webhooks/s ({CONNECTIONS} connections)", rps, ref_rps, unit="/s", target=">= 0.85 x ref",
        ok=rps >= 0.85 * ref_rps)
    row("receiver", "CPU per webhook", cpu["real"] / ours.sent * 1e6, cpu["reference"] / reference.sent * 1e6,
        unit="us")
    row("receiver", "p50 latency", percentile(ours.latencies, 0.5) * 1000,
        percentile(reference.latencies, 0.5) * 1000, unit="ms")
    p99, ref_p99 = percentile(ours.latencies, 0.99) * 1000, percentile(reference.latencies, 0.99) * 1000
    row("receiver", "p99 latency", p99, ref_p99, unit="ms", target="<= 1.3 x ref", ok=p99 <= 1.3 * ref_p99)
    row("receiver", "non-200 answers", ours.errors, reference.errors, target="0", ok=ours.errors == 0)


def merge(results: list[Result]) -> Result:
    return Result(sent=sum(r.sent for r in results), ok=sum(r.ok for r in results),
                  errors=sum(r.errors for r in results), seconds=sum(r.seconds for r in results),
                  latencies=[x for r in results for x in r.latencies])
