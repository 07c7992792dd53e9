"""A webhook load generator, run in its own process so it does not share the bridge's core.

Open loop (a fixed offered rate) or closed loop (`rate=None`: as fast as `connections` allow).
Every request carries a new Flowroute id, so a receiver cannot answer from its duplicate path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

TEMPLATE = ('{"data":{"attributes":{"amount_display":"$0.0070","amount_nanodollars":"7000000",'
            '"body":"Greetings on Friday evening! This is a benchmark text.","direction":"inbound",'
            '"from":"1206555%04d","is_mms":false,"message_encoding":0,"message_type":"longcode",'
            '"status":"delivered","timestamp":"2024-10-19T01:21:21.980000Z","to":"12065550100"},'
            '"type":"message","id":"mdr2-bench%027d"}}')


# A send through the Flowroute-compatible API, as FreePBX SMS Connector posts it (JSON:API, v2.2).
RELAY_TEMPLATE = ('{"data":{"type":"message","attributes":{"to":"+1206555%04d","from":"+12065550100",'
                  '"body":"Greetings on Friday evening! This is a benchmark text."}}}')


def payload(n: int, offset: int) -> bytes:
    return (TEMPLATE % ((n % 9000) + 1000, offset + n)).encode()


def relay_payload(n: int, offset: int) -> bytes:
    return (RELAY_TEMPLATE % ((n % 9000) + 1000)).encode()


@dataclass
class Result:
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]


async def _run(url: str, duration: float, rate: float | None, connections: int, offset: int,
               total: int | None, relay_auth: str | None = None) -> Result:
    latencies: list[float] = []
    issued = errors = 0
    limit = total if total is not None else 2**62
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    started = time.perf_counter()
    deadline = started + duration

    def more() -> bool:
        return time.perf_counter() < deadline and issued < limit

    def take() -> int:
        """The next request's number, counted as issued from this moment."""
        nonlocal issued
        issued += 1
        return issued - 1

    # relay_auth set: sends through the relay API (Basic auth), answered 202; else webhooks, 200.
    build, success = (relay_payload, 202) if relay_auth else (payload, 200)
    headers = {"Content-Type": "application/json", **({"Authorization": relay_auth} if relay_auth else {})}

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=build(n, offset), headers=headers) as response:
                await response.read()
                if response.status == success:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        except (aiohttp.ClientError, TimeoutError):  # a request past the session's timeout is an error too
            errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        if rate is None:
            async def worker() -> None:
                while more():
                    await one(session, take())
            await asyncio.gather(*(worker() for _ in range(connections)))
        else:
            tasks: set[asyncio.Task[None]] = set()
            interval, next_at = 1.0 / rate, started
            while more():
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                task = asyncio.create_task(one(session, take()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
            await asyncio.gather(*tasks)
    return Result(issued, len(latencies), errors, time.perf_counter() - started, latencies)


def run(url: str, duration: float, rate: float | None, connections: int, offset: int,
        total: int | None = None, relay_auth: str | None = None) -> Result:
    """Entry point for a `multiprocessing` child. Stops at `duration` s or `total` requests."""
    return asyncio.run(_run(url, duration, rate, connections, offset, total, relay_auth))
