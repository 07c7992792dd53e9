"""Shared fixtures. Tests that need a broker talk to a real RabbitMQ: a missing broker fails
the run (never skips), with a message saying how to start one."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from smsbridge.bridge import ROLES, Bridge
from smsbridge.broker import topology
from smsbridge.config import LedgerSettings, Settings
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.pbx_client import status_queue
from smsbridge.sandbox.pbx import FakePbx
from tests.support.broker import expire_leftover_queues
from tests.support.ledger import BACKENDS, ledger_location
from tests.support.settings import ACCOUNT, DID_BILLING, DID_MAIN, unique_prefix

UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches RabbitMQ `broker` (so `-m "not broker"` runs the rest), and keep
    tests/unit free of the broker: a unit test that asks for it fails at collection."""
    for item in items:
        if "amqp_url" in getattr(item, "fixturenames", ()):
            if UNIT in Path(item.path).parents:
                raise pytest.UsageError(f"{item.nodeid} needs RabbitMQ: move it to tests/integration")
            item.add_marker(pytest.mark.broker)


AMQP_URL = os.environ.get("SMSBRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _broker_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not _broker_reachable():
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}: start it (rabbitmq-server -detached) "
                    "or set SMSBRIDGE_TEST_AMQP_URL. Broker tests never skip.", pytrace=False)
    why_not = expire_leftover_queues(urlsplit(AMQP_URL).hostname or "127.0.0.1")
    if why_not is not None:
        warnings.warn(f"queues left by killed test runs will not expire: {why_not}", stacklevel=1)
    return AMQP_URL


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    yield connection
    await connection.close()


@pytest.fixture
async def channel(amqp: AbstractRobustConnection, prefix: str) -> AsyncIterator[AbstractChannel]:
    """A channel for the test's own look-ups; removes the test's topology afterwards."""
    ch = await amqp.channel()
    yield ch
    cleanup = await amqp.channel()
    await topology.delete(cleanup, prefix, accounts=[ACCOUNT])
    await cleanup.close()


@pytest.fixture
async def pbx() -> AsyncIterator[FakePbx]:
    fake = FakePbx()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def flowroute() -> AsyncIterator[FlowrouteSimulator]:
    """The Flowroute simulator, with the test account's keys, numbers and Flowroute's default limits."""
    simulator = FlowrouteSimulator({"AK-test": "SK-test"}, dlr_delay_s=0.05, webhook_resend_interval_s=0.2,
                                   numbers={"AK-test": [DID_MAIN, DID_BILLING]})
    await simulator.start()
    yield simulator
    await simulator.stop()


StartBridge = Callable[..., Awaitable[Bridge]]  # (settings, roles=every role) -> a started Bridge


@pytest.fixture
async def start_bridge(channel: AbstractChannel) -> AsyncIterator[StartBridge]:
    """Start bridges on given settings, with every role or some (like separate processes; each
    then serves its own health port); all are stopped in reverse order after the test."""
    started: list[Bridge] = []

    async def start(settings: Settings, roles: Iterable[str] = ROLES) -> Bridge:
        if tuple(roles) != ROLES:
            settings = msgspec.structs.replace(
                settings, observability=msgspec.structs.replace(settings.observability, port=0))
        bridge = Bridge(settings, roles)
        await bridge.start(connect_attempts=3)
        started.append(bridge)
        return bridge

    yield start
    for bridge in reversed(started):
        await bridge.stop()


@pytest.fixture
async def statuses(channel: AbstractChannel, prefix: str) -> AsyncIterator[AbstractQueue]:
    """The test tenant acme's status stream (the topology declared first: idempotent)."""
    await topology.declare(channel, prefix, delivery_limit=20, accounts=[ACCOUNT])
    async with status_queue(channel, prefix, "acme") as queue:
        yield queue


@pytest.fixture(params=BACKENDS)
async def ledger_settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerSettings]:
    """A fresh ledger on each backend: a SQLite file, and a PostgreSQL schema dropped afterwards."""
    async with ledger_location(request.param, tmp_path) as (url, schema):
        yield LedgerSettings(url=url, schema=schema)
