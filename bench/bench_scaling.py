"""4. Scaling: the inbound stage with 1, 2 and 4 worker processes on one preloaded queue.

Throughput is read from the output (the delivery queue filling up), between 10% and 90% of the
work, so process start-up and the last stragglers do not count. The reference is the ideal:
k processes doing k times what one does.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika

import workloads
from harness import Env, preload, purge, queue_depth, together
from report import row
from smsbridge.broker import names


async def stage_rate(channel: aio_pika.abc.AbstractChannel, output: str, total: int, timeout: float) -> float:
    """Messages per second appearing in `output`, between 10% and 90% of `total`."""
    low, high = int(total * 0.1), int(total * 0.9)
    t_low = t_high = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = await queue_depth(channel, output)
        now = time.monotonic()
        if t_low is None and depth >= low:
            t_low = now
        if depth >= high:
            t_high = now
            break
        await asyncio.sleep(0.01)
    if t_low is None or t_high is None or t_high <= t_low:
        return float("nan")  # timed out, or too few messages to tell
    return (high - low) / (t_high - t_low)


async def run(env: Env, channel: aio_pika.abc.AbstractChannel, *, messages: int, counts: tuple[int, ...]) -> None:
    inbound, delivery = names.stage_queue(env.prefix, "inbound"), names.stage_queue(env.prefix, "delivery")
    single = 0.0
    for k in counts:
        env.fresh_ledger()
        await purge(channel, delivery)
        config = env.config(f"scaling-{k}")
        # Workers first, idle on an empty queue; then the work, faster than they can take it.
        await together(*(env.bridge(config, "inbound", name=f"scaling-{k}-{i}") for i in range(k)))
        measuring = asyncio.create_task(stage_rate(channel, delivery, messages, timeout=120 + messages / 50))
        await preload(channel, inbound, workloads.inbound_messages(messages))
        rate = await measuring
        await env.stop_all()
        await purge(channel, inbound)
        single = single or rate
        # The reference is the ideal: k processes doing k times what one does.
        row("scaling", f"inbound stage, {k} process{'es' if k > 1 else ''}", rate, single * k, unit="/s")
    await purge(channel, delivery)
