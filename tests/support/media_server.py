"""A fake Flowroute media server on loopback: a real aiohttp server whose files can be made to
expire (403 with S3's XML error, as a dead presigned URL answers), fail a few times first, hang,
be huge, or come back with the wrong type. It counts requests and the bytes it managed to send."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

EXPIRED = b'<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>'


@dataclass
class FakeMediaServer:
    url: str = ""
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (bytes, content type)
    expired: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)  # name -> 503s still to give
    hits: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)  # bytes written per name
    hang: asyncio.Event = field(default_factory=asyncio.Event)  # set on stop: frees hung requests

    def add(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.files[name] = (data, content_type)
        return f"{self.url}/m/{name}"

    def expire(self, name: str) -> None:
        self.expired.add(name)

    def fail_first(self, name: str, times: int) -> None:
        self.failures[name] = times

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if name in self.expired:
            return web.Response(status=403, body=EXPIRED, content_type="application/xml")
        if self.failures[name] > 0:
            self.failures[name] -= 1
            return web.Response(status=503, text="busy")
        if name not in self.files:
            return web.Response(status=404)
        data, content_type = self.files[name]
        return await self._stream(request, name, data, content_type)

    async def _stream(self, request: web.Request, name: str, data: bytes, content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), 64 * 1024):
            await response.write(data[start:start + 64 * 1024])
            self.sent[name] += min(64 * 1024, len(data) - start)
        await response.write_eof()
        return response

    async def huge(self, request: web.Request) -> web.StreamResponse:
        """`size` bytes, announced (Content-Length) or not (chunked), written until the client leaves."""
        size, announce = int(request.query["size"]), request.query.get("announce") == "1"
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if announce:
            response.content_length = size
        await response.prepare(request)
        chunk = b"\xff" * (64 * 1024)
        try:
            while self.sent["huge"] < size:
                await response.write(chunk)
                self.sent["huge"] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self.hits["slow"] += 1
        await self.hang.wait()
        return web.Response(status=200, body=b"late", content_type="image/jpeg")


    async def redirect(self, request: web.Request) -> web.StreamResponse:
        """A redirect to wherever `?to=` says: how a hostile server points the bridge elsewhere."""
        raise web.HTTPFound(request.query["to"])


@asynccontextmanager
async def media_server() -> AsyncIterator[FakeMediaServer]:
    fake = FakeMediaServer()
    app = web.Application()
    app.router.add_get("/m/{name}", fake.serve)
    app.router.add_get("/huge", fake.huge)
    app.router.add_get("/slow", fake.slow)
    app.router.add_get("/redirect", fake.redirect)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        fake.hang.set()
        await runner.cleanup()
