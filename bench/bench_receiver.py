"""1. Receiver throughput: the real receiver against a minimal one, same load, same payloads.

The minimal reference is aiohttp + one msgspec decode + one confirmed aio-pika publish. Each
round starts both afresh, each in its own process, and the load alternates between them (the
order swaps every round), so a drift of the machine or the broker touches both alike. Besides
the rate, each side's CPU time per webhook (from /proc) is reported: it does not depend on how
the two cores were shared during the round, so it moves far less from run to run than the rate.
"""

from __future__ import annotations

import aio_pika
from tests.support.ports import free_port

from harness import ENV, Env, cpu_s, percentile, purge
from loadgen import Result
from pool import Pool
from report import row
from smsbridge.broker import names

CONNECTIONS = 32


async def run(env: Env, pool: Pool, channel: aio_pika.abc.AbstractChannel, *, seconds: float,
              rounds: int) -> None:
    ref_queue = env.extra_queue("reference-inbound")
    results: dict[str, list[Result]] = {"reference": [], "real": []}
    cpu = {"reference": 0.0, "real": 0.0}
    for number in range(rounds):
        # Fresh processes every round: one process's luck (its memory layout, hash seed, the core
        # it lands on) moves its rate by several per cent, and must not decide the figure.
        ref_port, port = free_port(), free_port()
        ref = await env.script("receiver", str(ref_port), env.amqp, ref_queue)
        real = await env.bridge(env.config("receiver", port=port), "receiver", name=f"receiver-{number}")
        targets = {"reference": (ref, f"http://127.0.0.1:{ref_port}/hook"),
                   "real": (real, f"http://127.0.0.1:{port}/webhooks/flowroute/main/{ENV['BENCH_TOKEN']}")}
        for _, url in targets.values():  # warm both up: connections, caches, the broker's queues
            await pool.load(url, 1.0, None, CONNECTIONS)
        order = list(targets) if number % 2 == 0 else list(reversed(targets))
        for name in order:
            proc, url = targets[name]
            before = cpu_s(proc.pid)
            results[name].append(await pool.load(url, seconds, None, CONNECTIONS))
            cpu[name] += cpu_s(proc.pid) - before
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
