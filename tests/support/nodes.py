"""A bridge on "nodes": loopback proxies in front of the one real RabbitMQ, each standing for a
node of a cluster (`[broker] urls` lists them), and what the node tests ask of that bridge: a
timed webhook, its readiness."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import aiohttp
import msgspec

from smsbridge.bridge import Bridge
from smsbridge.config import Settings
from tests.support.confirm_proxy import ConfirmHoldingProxy
from tests.support.settings import TOKEN, settings
from tests.support.tcpproxy import TcpProxy

Proxy = TypeVar("Proxy", bound=TcpProxy)
JSON = {"Content-Type": "application/json"}
RABBITMQ = ("127.0.0.1", 5672)


@asynccontextmanager
async def running(*proxies: Proxy) -> AsyncIterator[tuple[Proxy, ...]]:
    """Start the proxies; afterwards let through whatever they held back, then close them."""
    for proxy in proxies:
        await proxy.start()
    try:
        yield proxies
    finally:
        for proxy in proxies:
            if isinstance(proxy, ConfirmHoldingProxy):
                await proxy.release()
            proxy.heal()
            await proxy.cut()


def nodes_of(kind: type[Proxy], count: int = 2) -> AbstractAsyncContextManager[tuple[Proxy, ...]]:
    """`count` proxies of `kind` in front of the local RabbitMQ, `running`."""
    return running(*(kind(*RABBITMQ) for _ in range(count)))


async def bridge_on(start_bridge: Callable[..., Awaitable[Bridge]], nodes: Sequence[TcpProxy], *, prefix: str,
                    pbx_url: str) -> tuple[Bridge, str]:
    """A bridge with every role and the tests' settings on `nodes`, and its webhook URL."""
    bridge = await start_bridge(on_nodes(settings(prefix=prefix, pbx_url=pbx_url), [n.url for n in nodes]))
    return bridge, webhook_url(bridge)


def on_nodes(base: Settings, urls: Sequence[str], *, publish_timeout_s: float = 5.0) -> Settings:
    """`base` with the nodes' URLs as its broker URLs, in order."""
    return msgspec.structs.replace(base, broker=msgspec.structs.replace(
        base.broker, urls=list(urls), publish_timeout_s=publish_timeout_s))


def webhook_url(bridge: Bridge) -> str:
    return f"{bridge.receiver_url}/webhooks/flowroute/main/{TOKEN}"


async def timed_post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, float]:
    """A webhook: its status, and how long it took to come."""
    started = time.monotonic()
    async with http.post(url, data=body, headers=JSON) as response:
        return response.status, time.monotonic() - started


async def readiness(http: aiohttp.ClientSession, bridge: Bridge) -> tuple[int, dict[str, bool]]:
    async with http.get(f"{bridge.receiver_url}/readyz") as response:
        return response.status, (await response.json())["checks"]
