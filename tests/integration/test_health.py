"""/healthz and /readyz of a worker-only process, served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from smsbridge.metrics import Metrics
from smsbridge.receiver import make_health_app
from tests.support.settings import free_port

HEALTHY = {"broker_connected": True, "topology_declared": True, "ledger_usable": True}


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, bool]], str]]:
    """Serve the health app; the readiness checks are whatever the returned function was given."""
    checks = dict(HEALTHY)
    runner = web.AppRunner(make_health_app(Metrics(), lambda: dict(checks)), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def set_checks(new: dict[str, bool]) -> str:
        checks.update(new)
        return f"http://127.0.0.1:{port}"

    yield set_checks
    await runner.cleanup()


async def get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_a_broker_outage_is_not_ready_but_alive(serve: Callable[[dict[str, bool]], str]) -> None:
    base = serve({"broker_connected": False})
    assert await get(f"{base}/healthz") == (200, {"status": "ok"})
    status, body = await get(f"{base}/readyz")
    assert status == 503 and body["ready"] is False and body["checks"]["broker_connected"] is False


async def test_a_ledger_that_can_never_answer_fails_liveness(serve: Callable[[dict[str, bool]], str]) -> None:
    base = serve({})
    assert (await get(f"{base}/healthz"))[0] == 200
    serve({"ledger_usable": False})
    assert await get(f"{base}/healthz") == (503, {"status": "ledger_stopped"})
    status, body = await get(f"{base}/readyz")
    assert status == 503 and body["checks"]["ledger_usable"] is False
