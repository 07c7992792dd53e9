"""Media settings for tests: the local store in a temp dir, a link key, quick retries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from smsbridge.broker.consumer import MessageContext
from smsbridge.config import MediaSettings, Settings
from smsbridge.destinations import guarded_session
from smsbridge.events import InboundDelivery, InboundMessage, Media, MediaProblem
from smsbridge.ledger import Ledger
from smsbridge.media.fetch import MediaFetcher
from smsbridge.media.inbound import InboundMedia
from smsbridge.media.serve import add_media_routes
from smsbridge.media.store import MediaStore
from smsbridge.media.upload import add_upload_route
from smsbridge.metrics import Metrics
from smsbridge.secret import Secret
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.inbound import InboundHandler
from tests.support.ledger import open_ledger
from tests.support.media_server import FakeMediaServer, media_server
from tests.support.settings import DID_MAIN, settings

LINK_KEY = Secret("test-link-key-0123456789abcdefghijklmnop")


def media_settings(directory: Path, **overrides: Any) -> MediaSettings:
    fields: dict[str, Any] = dict(store="local", directory=str(directory), link_key=LINK_KEY, fetch_attempts=3,
                                  fetch_base_delay_s=0.01, fetch_timeout_s=10.0,
                                  fetch_allowed_networks=["127.0.0.0/8"])  # the fake media server
    fields.update(overrides)
    return MediaSettings(**fields)


def with_media(settings: Settings, media: MediaSettings) -> Settings:
    return msgspec.structs.replace(settings, media=media)


CONTEXT = MessageContext(origin_key="receiver", attempt=1)
PICTURE = b"\xff\xd8\xff" + bytes(range(256)) * 2000  # about 500 kB


@dataclass
class Rig:
    handler: InboundHandler
    publisher: InMemoryPublisher
    ledger: Ledger
    store: MediaStore
    server: FakeMediaServer
    http: aiohttp.ClientSession
    metrics: Metrics
    media: InboundMedia

    async def receive(self, *media: Media, mdr_id: str = "mdr2-one", from_: str = "+12065550199",
                      unusable: tuple[MediaProblem, ...] = ()) -> list[InboundDelivery]:
        # Texts of one conversation go to the PBX one at a time (ledger/order.py): tests that
        # want several published at once text from several numbers.
        message = InboundMessage(tenant="acme", config_id="main", mdr_id=mdr_id, from_=from_, to=DID_MAIN,
                                 body="look at this", is_mms=True, media=media, media_problems=unusable)
        await self.handler.handle(message, CONTEXT)
        bodies = [p.body for p in self.publisher.published if p.routing_key.endswith("delivery")]
        self.publisher.published.clear()
        return [msgspec.json.decode(b, type=InboundDelivery) for b in bodies]

    async def get(self, url: str) -> tuple[int, bytes, dict[str, str]]:
        async with self.http.get(url) as response:
            return response.status, await response.read(), dict(response.headers)


async def start_receiver(store: MediaStore, ledger: Ledger, upload: Settings | None = None,
                         port: int = 0) -> tuple[web.AppRunner, str]:
    """The receiver's media route alone (and the upload route, given settings), on a loopback port."""
    app = web.Application()
    add_media_routes(app, LINK_KEY, store, ledger)
    if upload is not None:
        add_upload_route(app, upload)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@asynccontextmanager
async def media_rig(tmp_path: Path, store: MediaStore, **media: Any) -> AsyncIterator[Rig]:
    """The inbound handler with media kept in `store`, a SQLite ledger, the fake media server and
    the media route; the PBX's view is what the in-memory publisher got."""
    async with open_ledger("sqlite", tmp_path) as ledger, media_server() as server, \
            guarded_session(["127.0.0.0/8"]) as http:
        runner, base_url = await start_receiver(store, ledger)
        config = with_media(settings(prefix="unit"), media_settings(
            tmp_path / "media", public_url=base_url, **{"max_message_bytes": 1_000_000, **media}))
        metrics, publisher = Metrics(), InMemoryPublisher()
        kept = InboundMedia(config, MediaFetcher(http, store, config.media), ledger, metrics)
        try:
            yield Rig(InboundHandler(config, publisher, ledger, metrics, kept), publisher, ledger, store, server, http,
                      metrics, kept)
        finally:
            await runner.cleanup()
