"""3. Dispatch: from the dispatch queue to the Flowroute simulator.

- Limits off: messages per second against a minimal reference consumer that POSTs each message
  (the same JSON:API body) to the same simulator with the same prefetch, and acks.
- Limits on (5 SMS/s, as Flowroute): the achieved rate as a fraction of the limit over the run,
  and the 429s the simulator answered, with 1, 2 and 3 dispatcher processes on the account
  (single active consumer: one sends, the others stand by).
Rates come from the simulator's own attempt times (first to last), so start-up does not count.
"""

from __future__ import annotations

import asyncio
import base64

import aio_pika
import msgspec

import workloads
from harness import Env, cpu_s, preload, wait_until
from report import Row, row
from smsbridge.broker import names, topology
from smsbridge.events import DispatchRequest, encoder
from smsbridge.flowroute.client import message_body
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Ledger

KEYS = {"AK-bench": "SK-bench", "AK-reference": "SK-reference"}
LIMIT = 5
UNLIMITED_RATE = 5000  # SMS/s configured for the account when the simulator's limits are off


def rate(simulator: FlowrouteSimulator, key: str) -> float:
    times = [t for t, _ in simulator.accounts[key].attempts]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def accepted(simulator: FlowrouteSimulator, key: str) -> int:
    return sum(1 for r in simulator.requests if r["status"] == 202 and r.get("user") == key)


async def _record_requests(env: Env, count: int) -> list[DispatchRequest]:
    """As the outbound worker leaves them: recorded in the ledger (queued next, by `_queue`)."""
    requests = workloads.dispatch_requests(count)
    ledger = Ledger.open(env.ledger_url)
    try:
        await ledger.upgrade()
        for request in requests:
            await ledger.record_request(request)
    finally:
        await ledger.close()
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


async def limited(env: Env, channel: aio_pika.abc.AbstractChannel, seconds: float, processes: int) -> list[Row]:
    simulator = FlowrouteSimulator(KEYS, sms_per_second=LIMIT, mms_per_second=1)
    await simulator.start()
    messages = int(LIMIT * seconds) + 1  # first to last attempt spans `seconds`
    try:
        await _queue(env, channel, await _record_requests(env, messages))
        config = env.config(f"dispatch-{processes}", api_base=simulator.url, sms_rate=LIMIT)
        procs = await asyncio.gather(*(env.bridge(config, "dispatcher", name=f"dispatch-{processes}-{i}")
                                       for i in range(processes)))
        await wait_until(lambda: accepted(simulator, "AK-bench") >= messages, timeout=seconds * 2 + 30)
        for proc in procs:
            await env.stop(proc)
        achieved = rate(simulator, "AK-bench")
        throttled = simulator.statuses().count(429)
        most = simulator.max_in_window("AK-bench")
        label = f"5/s, {processes} dispatcher{'s' if processes > 1 else ''}"
        return [
            Row("dispatch", f"{label}: sent/s vs limit", achieved, LIMIT, unit="/s", target="ratio >= 0.95",
                ok=achieved / LIMIT >= 0.95),
            Row("dispatch", f"{label}: 429 answers", throttled, None, target="0", ok=throttled == 0),
            Row("dispatch", f"{label}: max attempts in 1 s", most, LIMIT, target="<= 5", ok=most <= LIMIT),
        ]
    finally:
        await simulator.stop()


async def run(env: Env, channel: aio_pika.abc.AbstractChannel, *, messages: int, limited_seconds: float,
              processes: tuple[int, ...]) -> None:
    await unlimited(env, channel, messages)
    # The 1-, 2- and 3-dispatcher runs go side by side, each with its own broker prefix, ledger and
    # simulator, as three accounts would: 30 s once instead of three times. At 5/s each, they
    # leave the cores idle enough not to disturb one another.
    siblings = [env.sibling(f"dispatch-{count}") for count in processes]
    for sibling in siblings:
        await topology.declare(channel, sibling.prefix, delivery_limit=20, accounts=["bench"])
    try:
        results = await asyncio.gather(*(limited(sibling, channel, limited_seconds, count)
                                         for sibling, count in zip(siblings, processes, strict=True)))
    finally:
        for sibling in siblings:
            await sibling.stop_all()
            await topology.delete(channel, sibling.prefix, accounts=["bench"])
    for rows in results:
        for figure in rows:
            figure.print()
