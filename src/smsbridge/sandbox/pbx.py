"""A demo PBX: a real aiohttp server that takes HTTP deliveries and remembers them.

Tests script its answers (`answers=[503, 503]` then 200s) to exercise retries; `make run`
uses it so a new user sees where inbound texts land without a PBX of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
import structlog
from aiohttp import web

log = structlog.get_logger("smsbridge.sandbox.pbx")


class FakePbx:
    def __init__(self, *, answers: Iterable[int] = (), path: str = "/sms/inbound",
                 expect_auth: tuple[str, str] | None = None, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s  # a slow PBX: each answer waits this long
        self.down_with: int | None = None  # a PBX that is down: every answer is this status while set
        self._answers = list(answers)
        self._path = path
        self._expect_auth = expect_auth
        self.arrived = 0  # requests that reached the handler, answered or not yet
        self.attempts: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.received: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, answers: Iterable[int]) -> None:
        """Answer the next requests with these statuses, then 200 again."""
        self._answers = list(answers)

    async def _handle(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        self.arrived += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        headers = {k: v for k, v in request.headers.items()}
        if self.down_with is not None:
            status = self.down_with
        else:
            status = self._answers.pop(0) if self._answers else 200
        if self._expect_auth and request.headers.get(self._expect_auth[0]) != self._expect_auth[1]:
            status = 401
        async with self._changed:
            self.attempts.append((status, body, headers))
            if 200 <= status < 300:
                self.received.append(body)
                log.info("PBX received a text", extension=body.get("extension"), from_=body.get("from"),
                         body=body.get("body"), media=len(body.get("media", [])),
                         media_urls=[m.get("url") for m in body.get("media", [])])
            self._changed.notify_all()
        if 200 <= status < 300:
            return web.json_response({"ok": True})
        return web.json_response({"error": f"scripted {status}"}, status=status)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post(self._path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{host}:{bound[1]}{self._path}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `count` deliveries succeeded; return them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.received) >= count), timeout)
        return list(self.received)
