"""Connecting to RabbitMQ: robust (reconnects and re-declares by itself), across a URL list.

aio-pika's robust connection reconnects to the URL it has (`connection.url`, which it reads on
every attempt), first at once and then every `reconnect_interval` (5 s unless told: we say
`RECONNECT_INTERVAL_S`). For a cluster, `failover` points it at the next node the moment the
connection closes, and again every `FAILOVER_AFTER_S` while attempts keep failing, skipping
the node the process's other connection uses (`avoid`). So when a node dies the consumers are
back on another node within about a second, and publishers lose nothing at all: the bridge
keeps a second connection, to another node, as the publisher's second route
(`broker/publisher.py`). `amqps://` URLs use
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
RECONNECT_INTERVAL_S = 0.5  # between attempts; an attempt at a dead node fails at once (refused)
FAILOVER_AFTER_S = 1.0  # while attempts fail, move on to the next node this often
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


def rotated(urls: list[str], first: int) -> list[str]:
    """The same nodes, starting at `first` (a second connection starts on another node)."""
    if not urls:
        return urls
    first %= len(urls)
    return urls[first:] + urls[:first]


def node(url: str) -> tuple[str | None, int | None]:
    """Which broker node a URL points at (its query, e.g. our heartbeat, does not matter)."""
    parsed = yarl.URL(url)
    return parsed.host, parsed.port


def following(urls: list[str], current: str, avoid: str | None = None) -> str:
    """The node after `current` in `urls` (tuned), not `avoid` unless it is the only other one."""
    nodes = [tuned(u) for u in urls]
    here = next((i for i, u in enumerate(nodes) if node(u) == node(current)), -1)
    after = [nodes[(here + k) % len(nodes)] for k in range(1, len(nodes) + 1)]
    others = [u for u in after if node(u) != node(current)] or after
    preferred = [u for u in others if avoid is None or node(u) != node(avoid)]
    return (preferred or others)[0]


async def connect(urls: list[str], *, attempts: int | None = None, name: str = "smsbridge",
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
                    tuned(url), client_properties={"connection_name": name}, timeout=CONNECT_TIMEOUT_S,
                    reconnect_interval=RECONNECT_INTERVAL_S)
                assert isinstance(connection, aio_pika.RobustConnection)
                return connection
            except (ConnectionError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker not reachable", url=_safe(url), error=repr(exc))
        attempt += 1
        if attempts is not None and attempt >= attempts:
            raise ConnectionError(f"no broker reachable at {', '.join(_safe(u) for u in urls)}")
        await sleep(compute_backoff(attempt, base=0.5, cap=10.0))


async def failover(connection: aio_pika.RobustConnection, urls: list[str], *,
                   avoid: Callable[[], str | None] = lambda: None, after_s: float = FAILOVER_AFTER_S,
                   check_s: float = 0.25) -> None:
    """Run for the connection's life: point it at the next URL when it closes, and again every
    `after_s` while it stays disconnected."""
    if len(urls) < 2:
        return
    loop = asyncio.get_running_loop()
    down_since = loop.time()

    def move(reason: str) -> None:
        nonlocal down_since
        target = following(urls, str(connection.url), avoid())
        connection.url = yarl.URL(target)  # read by the robust connection's next attempt
        log.warning("broker connection lost: trying the next node", url=_safe(target), reason=reason)
        down_since = loop.time()

    lost_at: float | None = None  # when the connection was lost, until every channel is back

    def on_close(_sender: object, exc: BaseException | None = None) -> None:
        # Runs before aio-pika's immediate reconnect attempt, so that attempt already goes elsewhere.
        nonlocal lost_at
        if not connection.close_called:
            lost_at = loop.time() if lost_at is None else lost_at
            move(f"closed: {exc!r}")

    def on_reconnect(_sender: object) -> None:
        # aio-pika calls this once every channel, and with it every consumer, is restored.
        nonlocal lost_at
        log.warning("broker connection restored", url=_safe(str(connection.url)),
                    down_s=None if lost_at is None else round(loop.time() - lost_at, 2))
        lost_at = None

    connection.close_callbacks.add(on_close)
    connection.reconnect_callbacks.add(on_reconnect)
    try:
        while not connection.is_closed:
            await asyncio.sleep(check_s)
            if connection.connected.is_set():
                down_since = loop.time()
            elif loop.time() - down_since >= after_s:
                move("still unreachable")
    finally:
        connection.close_callbacks.discard(on_close)
        connection.reconnect_callbacks.discard(on_reconnect)
