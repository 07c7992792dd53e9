"""3. Dispatch: from the dispatch queue to the Flowroute simulator.

- Limits off: messages per second against a minimal reference consumer that POSTs each message
  (the same JSON:API body) to the same simulator with the same prefetch, and acks.
- Limits on (5 SMS/s, as Flowroute): the achieved rate as a fraction of the limit over the run,
  the 429s the simulator answered and the most attempts it saw in any 1000 ms, with 1, 2 and 3
  dispatcher processes on the account (single active consumer: one sends, the others stand by);
  each without and with jitter (every request reaches the simulator 0-50 ms late, at random, as
  on a real network path); and a takeover: two dispatchers, the active one SIGKILLed half-way,
  with jitter, over a longer run (the takeover's pause, at least a window, is measured too, as
  are duplicate sends).
Rates come from the simulator's own attempt times (first to last), so start-up does not count.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import msgspec

import workloads
from harness import Env, cpu_s, preload, record_requests, together, wait_until
from report import Row, row
from smsbridge.broker import names, topology
from smsbridge.events import DispatchRequest, encoder
from smsbridge.flowroute.client import message_body
from smsbridge.flowroute.simulator import FlowrouteSimulator

KEYS = {"AK-bench": "SK-bench", "AK-reference": "SK-reference"}
LIMIT = 5
JITTER_S = 0.05
UNLIMITED_RATE = 5000  # SMS/s configured for the account when the simulator's limits are off


def rate(simulator: FlowrouteSimulator, key: str) -> float:
    times = [t for t, _ in simulator.accounts[key].attempts]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def accepted(simulator: FlowrouteSimulator, key: str) -> int:
    return sum(1 for r in simulator.requests if r["status"] == 202 and r.get("user") == key)


async def _record_requests(env: Env, count: int) -> list[DispatchRequest]:
    """As the outbound worker leaves them: recorded in the ledger (queued next, by `_queue`)."""
    requests = workloads.dispatch_requests(count)
    await record_requests(env.ledger_url, requests)
    return requests


async def _queue(env: Env, channel: aio_pika.abc.AbstractChannel, requests: list[DispatchRequest]) -> None:
    await preload(channel, names.stage_queue(env.prefix, names.dispatch_stage("bench")),
                  (encoder.encode(r) for r in requests))


async def unlimited(env: Env, channel: aio_pika.abc.AbstractChannel, messages: int) -> None:
    simulator = FlowrouteSimulator(KEYS, sms_per_second=None, mms_per_second=None)
    await simulator.start()
    # Our own limiter is set far above what either side reaches here (it would otherwise be what
    # is measured); the reference gets the same prefetch the dispatcher takes for that rate.
    prefetch = 2 * UNLIMITED_RATE
    try:
        queue = env.extra_queue("reference-dispatch")
        auth = "Basic " + base64.b64encode(b"AK-reference:SK-reference").decode()
        ref = await env.script("dispatcher", env.amqp, queue, f"{simulator.url}/v2.2/messages", auth, str(prefetch))
        bodies = (msgspec.json.encode(message_body(r)) for r in workloads.dispatch_requests(messages))
        ref_cpu = cpu_s(ref.pid)
        await preload(channel, queue, bodies)
        await wait_until(lambda: accepted(simulator, "AK-reference") >= messages, timeout=120)
        ref_cpu = cpu_s(ref.pid) - ref_cpu
        await env.stop(ref)
        env.fresh_ledger()
        requests = await _record_requests(env, messages)
        config = env.config("dispatch", api_base=simulator.url, sms_rate=UNLIMITED_RATE)
        real = await env.bridge(config, "dispatcher", name="dispatch")
        real_cpu = cpu_s(real.pid)  # from here on, only the messages (the start-up is behind us)
        await _queue(env, channel, requests)
        await wait_until(lambda: accepted(simulator, "AK-bench") >= messages, timeout=120)
        real_cpu = cpu_s(real.pid) - real_cpu
        await env.stop(real)
        row("dispatch", "limits off: sent/s", rate(simulator, "AK-bench"), rate(simulator, "AK-reference"),
            unit="/s")
        row("dispatch", "limits off: CPU per message", real_cpu / messages * 1e6, ref_cpu / messages * 1e6,
            unit="us")
        row("dispatch", f"limits off: accepted of {messages}", accepted(simulator, "AK-bench"),
            accepted(simulator, "AK-reference"), target=str(messages),
            ok=accepted(simulator, "AK-bench") == messages)
    finally:
        await simulator.stop()


@dataclass(frozen=True)
class Case:
    """One limits-on run: how many dispatchers, with network jitter or not, with a takeover or not."""

    processes: int
    jitter: bool = False
    takeover: bool = False

    @property
    def label(self) -> str:
        label = f"5/s, {self.processes} dispatcher{'s' if self.processes > 1 else ''}"
        return label + (", jitter 0-50 ms" if self.jitter else "") + (", takeover" if self.takeover else "")


def sent_to(simulator: FlowrouteSimulator, key: str) -> list[str]:
    """The destination of every accepted send: each benchmark message has its own."""
    return [r["body"]["data"]["attributes"]["to"] for r in simulator.requests
            if r["status"] == 202 and r.get("user") == key]


def longest_gap(simulator: FlowrouteSimulator, key: str) -> float:
    times = [t for t, _ in simulator.accounts[key].attempts]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


async def limited(env: Env, channel: aio_pika.abc.AbstractChannel, seconds: float, case: Case,
                  starting: asyncio.Semaphore) -> list[Row]:
    simulator = FlowrouteSimulator(KEYS, sms_per_second=LIMIT, mms_per_second=1)
    simulator.faults.jitter_s = JITTER_S if case.jitter else 0.0
    await simulator.start()
    messages = int(LIMIT * seconds) + 1  # first to last attempt spans `seconds`
    name = f"dispatch-{case.processes}{'-jitter' if case.jitter else ''}{'-takeover' if case.takeover else ''}"
    try:
        await _queue(env, channel, await _record_requests(env, messages))
        config = env.config(name, api_base=simulator.url, sms_rate=LIMIT)
        if case.takeover:
            procs = await _takeover(env, config, name, simulator, messages, starting)
        else:
            procs = await together(*(_start(env, config, f"{name}-{i}", starting) for i in range(case.processes)))
        await wait_until(lambda: len(set(sent_to(simulator, "AK-bench"))) >= messages,
                         timeout=seconds * 2 + 30)
        for proc in procs:
            await env.stop(proc)
        return _figures(simulator, case, messages)
    finally:
        await simulator.stop()


async def _start(env: Env, config: Path, name: str, starting: asyncio.Semaphore) -> asyncio.subprocess.Process:
    """A few processes start at a time: fourteen at once on two busy cores (imports, connections,
    quorum queue declarations) took longer than the harness waits."""
    async with starting:
        return await env.bridge(config, "dispatcher", name=name)


async def _takeover(env: Env, config: Path, name: str, simulator: FlowrouteSimulator,
                    messages: int, starting: asyncio.Semaphore) -> list[asyncio.subprocess.Process]:
    """The first dispatcher starts sending, a second stands by; half-way the first is killed."""
    first = await _start(env, config, f"{name}-0", starting)
    await wait_until(lambda: accepted(simulator, "AK-bench") >= 1, timeout=60)
    second = await _start(env, config, f"{name}-1", starting)
    await wait_until(lambda: accepted(simulator, "AK-bench") >= messages // 2, timeout=messages)
    first.kill()  # SIGKILL: nothing is handed over but what the broker redelivers
    await first.wait()
    return [second]


def _figures(simulator: FlowrouteSimulator, case: Case, messages: int) -> list[Row]:
    achieved = rate(simulator, "AK-bench")
    throttled = simulator.statuses().count(429)
    most = simulator.max_in_window("AK-bench")
    label = case.label
    rows = [
        Row("dispatch", f"{label}: sent/s vs limit", achieved, LIMIT, unit="/s", target="ratio >= 0.95",
            ok=achieved / LIMIT >= 0.95),
        Row("dispatch", f"{label}: 429 answers", throttled, None, target="0", ok=throttled == 0),
        Row("dispatch", f"{label}: max attempts in 1 s", most, LIMIT, target="<= 5", ok=most <= LIMIT),
    ]
    if case.takeover:
        doubles = len(sent_to(simulator, "AK-bench")) - len(set(sent_to(simulator, "AK-bench")))
        rows += [Row("dispatch", f"{label}: duplicate sends", doubles, None, target="0", ok=doubles == 0),
                 Row("dispatch", f"{label}: longest pause", longest_gap(simulator, "AK-bench"), None, unit="s")]
    return rows


async def run(env: Env, channel: aio_pika.abc.AbstractChannel, *, messages: int, limited_seconds: float,
              processes: tuple[int, ...], takeover_seconds: float) -> None:
    await unlimited(env, channel, messages)
    # The limits-on runs go side by side, each series with its own prefix, ledger and simulator,
    # as separate accounts would: per dispatcher count, 30 s without jitter then 30 s with it,
    # beside the takeover's 70 s (its pause of a window or so is the price of not knowing what
    # the dead dispatcher sent, and it is measured within the whole run's rate). At 5/s each, they
    # leave the cores idle enough not to disturb one another. Four prefixes, not seven: every
    # prefix is some twenty quorum queues, and a busy shared broker declares them slowly.
    series = [[Case(count), Case(count, jitter=True)] for count in processes]
    series.append([Case(2, jitter=True, takeover=True)])
    siblings = [env.sibling(f"dispatch-{n}") for n in range(len(series))]
    for sibling in siblings:
        await topology.declare(channel, sibling.prefix, delivery_limit=20, accounts=["bench"])
    starting = asyncio.Semaphore(3)

    async def one_after_another(sibling: Env, cases: list[Case]) -> list[Row]:
        rows: list[Row] = []
        for case in cases:
            seconds = takeover_seconds if case.takeover else limited_seconds
            rows += await limited(sibling, channel, seconds, case, starting)
        return rows

    try:
        results = await together(*(one_after_another(sibling, cases)
                                   for sibling, cases in zip(siblings, series, strict=True)))
    finally:
        for sibling in siblings:
            await sibling.stop_all()
            await topology.delete(channel, sibling.prefix, accounts=["bench"])
    figures = [figure for rows in results for figure in rows]
    for figure in sorted(figures, key=lambda row: ("takeover" in row.figure, "jitter" in row.figure)):
        figure.print()
