"""Connecting to RabbitMQ: robust (reconnects and re-declares by itself), across a URL list."""

from __future__ import annotations

import asyncio

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection

from smsbridge.backoff import compute_backoff

log = structlog.get_logger("smsbridge.broker")


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}:***@{host}"


async def connect(urls: list[str], *, attempts: int | None = None) -> AbstractRobustConnection:
    """Connect to the first URL that answers, trying them in turn with backoff.

    `attempts=None` waits for ever (a bridge that starts before its broker waits for it).
    """
    attempt = 0
    while True:
        for url in urls:
            try:
                return await aio_pika.connect_robust(url, client_properties={"connection_name": "smsbridge"})
            except (ConnectionError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker not reachable", url=_safe(url), error=repr(exc))
        attempt += 1
        if attempts is not None and attempt >= attempts:
            raise ConnectionError(f"no broker reachable at {', '.join(_safe(u) for u in urls)}")
        await asyncio.sleep(compute_backoff(attempt, base=0.5, cap=10.0))
