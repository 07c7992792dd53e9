"""`make bench`: every benchmark, each beside a minimal reference in the same run.

Prints a table (figure, value, reference, ratio, target) and writes bench/results/latest.json
(`--quick`: bench/results/quick.json). `--quick` runs each on a tiny load; the test suite uses it
to check that every benchmark runs and prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.ports
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aio_pika
import aiormq

import bench_accounts
import bench_dispatch
import bench_inbound
import bench_memory
import bench_receiver
import bench_relay
import bench_scaling
import bench_sip
from harness import Env
from pool import Pool
from report import HEADER, ROWS, row, value
from smsbridge.broker import topology

BENCHES = ("receiver", "inbound", "dispatch", "accounts", "relay", "sip", "scaling", "memory")
BUDGET_S = 600  # the full suite's time budget on two cores


@dataclass(frozen=True)
class Sizes:
    """How much load each benchmark gets: the full run, or a tiny one that only proves it works."""

    receiver_seconds: float
    receiver_rounds: int
    inbound_rates: tuple[int, ...]
    inbound_seconds: float
    inbound_max_messages: int
    dispatch_messages: int
    dispatch_limited_seconds: float
    dispatch_processes: tuple[int, ...]
    dispatch_takeover_seconds: float
    scaling_messages: int
    scaling_processes: tuple[int, ...]
    memory_messages: int
    accounts: int = 100
    accounts_seconds: float = 12
    accounts_processes: tuple[int, ...] = (1, 2, 4)
    relay_seconds: float = 3
    relay_rounds: int = 3  # 3 of 3 s: steadier than 2 of 4 s, for about 6 s more
    relay_limited_seconds: float = 30
    sip_seconds: float = 2
    sip_rounds: int = 2
    sip_concurrency: int = 8


FULL = Sizes(receiver_seconds=4, receiver_rounds=3, inbound_rates=(100, 500, 1000), inbound_seconds=3,
             inbound_max_messages=1500, dispatch_messages=4000, dispatch_limited_seconds=30,
             dispatch_processes=(1, 2, 3), dispatch_takeover_seconds=70, scaling_messages=4000,
             scaling_processes=(1, 2, 4),
             memory_messages=30_000)
QUICK = Sizes(receiver_seconds=0.5, receiver_rounds=1, inbound_rates=(100, 500, 1000), inbound_seconds=0.3,
              inbound_max_messages=100, dispatch_messages=30, dispatch_limited_seconds=1,
              dispatch_processes=(1, 2, 3), dispatch_takeover_seconds=2, scaling_messages=600,
              scaling_processes=(1, 2, 4),
              memory_messages=300, relay_seconds=0.5, relay_rounds=1, relay_limited_seconds=1,
              accounts=10, accounts_seconds=1, accounts_processes=(1, 2), sip_seconds=0.3, sip_rounds=1,
              sip_concurrency=2)


def intake_beside_receiver() -> None:
    """Issue 21 compares the SIP intake with the webhook receiver: both take a text from outside and
    answer once the broker confirmed it. Printed when both ran (the receiver's rate of this run)."""
    webhooks = value(ROWS, "receiver", "webhooks/s")
    intake = next((float(r["value"]) for r in ROWS if r["bench"] == "sip" and "intake MESSAGE" in str(r["figure"])),
                  None)
    if webhooks and intake is not None:
        row("sip", "intake requests/s beside the receiver's webhooks/s", intake, webhooks, unit="/s",
            target=">= 0.8 x receiver", ok=intake >= 0.8 * webhooks)


WALL_CLOCK: dict[str, float] = {}  # seconds each benchmark took, in the order they ran


@asynccontextmanager
async def timed(bench: str) -> AsyncIterator[None]:
    """Time one benchmark, start-up and clean-up included, and print it as a row of its own: the
    budget is for the whole run, and this shows what each part takes of it."""
    started = time.monotonic()
    yield
    WALL_CLOCK[bench] = round(time.monotonic() - started, 1)
    row(bench, "wall clock, seconds", WALL_CLOCK[bench], None, unit="s")


async def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.memory_messages:
        sizes = replace(sizes, memory_messages=args.memory_messages)
    wanted = args.only or list(BENCHES)
    env = Env(amqp=args.amqp, workdir=Path(tempfile.mkdtemp(prefix="smsbridge-bench-")))
    print(f"smsbridge benchmarks on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})"
          f"{' [quick]' if args.quick else ''}", flush=True)
    print(HEADER, flush=True)
    connection = await aio_pika.connect_robust(args.amqp)
    channel = await connection.channel()
    accounts = ["bench"]
    await topology.declare(channel, env.prefix, delivery_limit=20, accounts=accounts)
    pool = Pool()
    started = time.monotonic()
    try:
        if "receiver" in wanted:
            async with timed("receiver"):
                await bench_receiver.run(env, pool, channel, seconds=sizes.receiver_seconds,
                                         rounds=sizes.receiver_rounds)
        if "inbound" in wanted:
            async with timed("inbound"):
                await bench_inbound.run(env, pool, channel, rates=sizes.inbound_rates, seconds=sizes.inbound_seconds,
                                        max_messages=sizes.inbound_max_messages, pg_url=args.pg)
        if "dispatch" in wanted:
            async with timed("dispatch"):
                await bench_dispatch.run(env, channel, messages=sizes.dispatch_messages,
                                         limited_seconds=sizes.dispatch_limited_seconds,
                                         processes=sizes.dispatch_processes,
                                         takeover_seconds=sizes.dispatch_takeover_seconds)
        if "accounts" in wanted:
            async with timed("accounts"):
                await bench_accounts.run(env, channel, count=sizes.accounts, seconds=sizes.accounts_seconds,
                                         processes=sizes.accounts_processes)
        if "relay" in wanted:
            async with timed("relay"):
                await bench_relay.run(env, pool, channel, seconds=sizes.relay_seconds, rounds=sizes.relay_rounds,
                                      limited_seconds=sizes.relay_limited_seconds)
        if "sip" in wanted:
            async with timed("sip"):
                await bench_sip.run(args.amqp, seconds=sizes.sip_seconds, rounds=sizes.sip_rounds,
                                    concurrency=sizes.sip_concurrency)
                intake_beside_receiver()
        if "scaling" in wanted:
            async with timed("scaling"):
                await bench_scaling.run(env, channel, messages=sizes.scaling_messages,
                                        counts=sizes.scaling_processes)
        if "memory" in wanted:
            async with timed("memory"):
                await bench_memory.run(env, pool, channel, messages=sizes.memory_messages)
    finally:
        await env.stop_all()
        pool.close()
        await topology.delete(channel, env.prefix, accounts=accounts)
        env.extra_queues.append(f"{env.prefix}.relay-dlr")  # declared by the relay benchmark's bridges
        for queue in env.extra_queues:
            try:
                await channel.queue_delete(queue)
            except aiormq.exceptions.AMQPError:
                pass
        await connection.close()
    elapsed = time.monotonic() - started
    full = not (args.quick or args.only or args.memory_messages)  # the budget is for the whole suite
    within = elapsed <= BUDGET_S if full else None
    verdict = "" if within is None else f" (budget {BUDGET_S} s on two cores: {'ok' if within else 'MISSED'})"
    print(f"done in {elapsed:.0f} s{verdict}", flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
              "quick": args.quick, "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "seconds": round(elapsed), "budget_s": BUDGET_S, "within_budget": within,
              "seconds_by_bench": WALL_CLOCK, "rows": ROWS}
    (results / ("quick.json" if args.quick else "latest.json")).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny loads: check that everything runs")
    parser.add_argument("--amqp", default=os.environ.get("SMSBRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1/"))
    parser.add_argument("--pg", default=os.environ.get("SMSBRIDGE_TEST_PG_URL",
                                                      "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="the PostgreSQL the inbound benchmark's second ledger lives in (a schema of its own)")
    parser.add_argument("--only", action="append", choices=BENCHES, help="run only these (repeatable)")
    parser.add_argument("--memory-messages", type=int, help="messages per role for the memory benchmark")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results"),
                        help="where the JSON goes (default: bench/results)")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
