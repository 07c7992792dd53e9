"""Connecting to RabbitMQ: robust (reconnects and re-declares by itself), across a URL list.

aio-pika's robust connection reconnects to the URL it has (`connection.url`, which it reads on
every attempt). For a cluster we give it the next node's URL when it has been down for a few
seconds (`failover`), so losing one node is a short pause, not an outage. `amqps://` URLs use
TLS (aio-pika reads `cafile`, `certfile`, `keyfile` and `no_verify_ssl` from the URL query).

A silent partition (packets dropped, no reset) is noticed by AMQP heartbeats: we ask for one
every `HEARTBEAT_S` seconds unless the URL says `?heartbeat=N`, and aiormq drops a connection
that has received nothing for (N + 1) × 3 seconds; the robust connection then reconnects (or
fails over). Readiness does not wait for that: see `broker/liveness.py`. Every (re)connection
attempt is bounded by `CONNECT_TIMEOUT_S`, so one begun during a partition cannot hang for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
import structlog
import yarl

from smsbridge.backoff import compute_backoff

log = structlog.get_logger("smsbridge.broker")
# RabbitMQ's default, 60, keeps a dead connection for over three minutes; much below 10 risks
# dropping a live one whose process was busy. Readiness does not wait for it (broker/liveness.py).
HEARTBEAT_S = 10
CONNECT_TIMEOUT_S = 60.0  # a broker under heavy load can take many seconds to finish a handshake


def tuned(url: str) -> str:
    """The URL with our heartbeat, unless it names its own."""
    parsed = yarl.URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=HEARTBEAT_S))


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}:***@{host}"


async def connect(urls: list[str], *, attempts: int | None = None,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> aio_pika.RobustConnection:
    """Connect to the first URL that answers, trying them in turn with backoff (at most 10 s apart).

    `attempts=None` waits for ever (a bridge that starts before its broker waits for it): the
    backoff's exponent is capped, so the thousandth round is no different from the tenth.
    """
    attempt = 0
    while True:
        for url in urls:
            try:
                connection = await aio_pika.connect_robust(
                    tuned(url), client_properties={"connection_name": "smsbridge"}, timeout=CONNECT_TIMEOUT_S)
                assert isinstance(connection, aio_pika.RobustConnection)
                return connection
            except (ConnectionError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker not reachable", url=_safe(url), error=repr(exc))
        attempt += 1
        if attempts is not None and attempt >= attempts:
            raise ConnectionError(f"no broker reachable at {', '.join(_safe(u) for u in urls)}")
        await sleep(compute_backoff(attempt, base=0.5, cap=10.0))


async def failover(connection: aio_pika.RobustConnection, urls: list[str], *, after_s: float = 3.0,
                   check_s: float = 0.5) -> None:
    """Run for the connection's life: point it at the next URL while it stays disconnected."""
    if len(urls) < 2:
        return
    down_since: float | None = None
    loop = asyncio.get_running_loop()
    while not connection.is_closed:
        await asyncio.sleep(check_s)
        if connection.connected.is_set():
            down_since = None
            continue
        down_since = down_since or loop.time()
        if loop.time() - down_since >= after_s:
            current = str(connection.url)
            nodes = [tuned(u) for u in urls]
            following = nodes[(next((i for i, u in enumerate(nodes) if yarl.URL(u) == yarl.URL(current)), -1) + 1)
                              % len(nodes)]
            connection.url = yarl.URL(following)  # read by the robust connection's next attempt
            log.warning("broker node unreachable: trying the next one", url=_safe(following))
            down_since = loop.time()
