"""Connecting to RabbitMQ: robust (reconnects and re-declares by itself), across a URL list.

aio-pika's robust connection reconnects to the URL it has (`connection.url`, which it reads on
every attempt). For a cluster we give it the next node's URL when it has been down for a few
seconds (`failover`), so losing one node is a short pause, not an outage. `amqps://` URLs use
TLS (aio-pika reads `cafile`, `certfile`, `keyfile` and `no_verify_ssl` from the URL query).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
import structlog
import yarl

from smsbridge.backoff import compute_backoff

log = structlog.get_logger("smsbridge.broker")


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
                connection = await aio_pika.connect_robust(url, client_properties={"connection_name": "smsbridge"})
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
            following = urls[(next((i for i, u in enumerate(urls) if yarl.URL(u) == yarl.URL(current)), -1) + 1)
                             % len(urls)]
            connection.url = yarl.URL(following)  # read by the robust connection's next attempt
            log.warning("broker node unreachable: trying the next one", url=_safe(following))
            down_since = loop.time()
