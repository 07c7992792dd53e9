"""Media: memory and throughput of the inbound stage while MMS attachments pass through it.

`python bench/bench_media.py [--messages 200] [--mb 5] [--concurrency 8]`

A media server in its own process serves distinct attachments (each `--mb` MB, generated chunk by
chunk, never held whole), so neither its memory nor its CPU is counted here. In this process, the
inbound handler (fetch into the local store, ledger record, signed link, deliveries published to
the in-memory broker) handles `--messages` MMS with `--concurrency` at once, as the consumer's
prefetch would. RSS is sampled throughout: "before" once the first tenth has passed (imports,
pools, buffers exist), "peak" and "after" over the rest. Target: after and peak within 10% of
before (nothing is kept per message, and no attachment is held whole in memory). The reference
is a bare aiohttp streaming download of the same attachments, with the same concurrency, in the
same run: its bytes dropped, and again written to files (what any store must at least do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

import aiohttp
from aiohttp import web
from tests.support.media import media_settings, with_media
from tests.support.ports import free_port
from tests.support.settings import DID_MAIN, settings

from smsbridge import logs
from smsbridge.broker.consumer import MessageContext
from smsbridge.config import LedgerSettings, LoggingSettings
from smsbridge.destinations import guarded_session
from smsbridge.events import InboundMessage, Media
from smsbridge.ledger import Ledger
from smsbridge.media.fetch import MediaFetcher
from smsbridge.media.inbound import InboundMedia
from smsbridge.media.store import LocalStore
from smsbridge.metrics import Metrics
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.inbound import InboundHandler

CHUNK = 64 * 1024
CONTEXT = MessageContext(origin_key="receiver", attempt=1)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ----- the media server (its own process) ---------------------------------------------------------
async def _attachment(request: web.Request) -> web.StreamResponse:
    index, size = int(request.match_info["index"]), int(request.query["size"])
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    response.content_length = size
    await response.prepare(request)
    block = (index.to_bytes(8, "big") * (CHUNK // 8))
    for start in range(0, size, CHUNK):
        await response.write(block[:min(CHUNK, size - start)])
    await response.write_eof()
    return response


def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/a/{index}", _attachment)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ----- the measured side ----------------------------------------------------------------------------
class Sampler:
    def __init__(self) -> None:
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.peak = rss_mb()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def bounded(count: int, concurrency: int, work: object) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await work(i)  # type: ignore[operator]

    await asyncio.gather(*(one(i) for i in range(count)))


async def bare_download(base: str, count: int, size: int, concurrency: int, into: Path | None = None) -> float:
    """Seconds to stream `count` attachments with aiohttp, dropping the bytes (or, with `into`,
    writing each to a file there in a thread, as a store must)."""
    async with aiohttp.ClientSession() as http:
        async def fetch(i: int) -> None:
            async with http.get(f"{base}/a/{100_000 + i}?size={size}") as response:
                if into is None:
                    async for _ in response.content.iter_chunked(CHUNK):
                        pass
                    return
                out = await asyncio.to_thread((into / str(i)).open, "wb")
                with out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        await asyncio.to_thread(out.write, chunk)

        started = time.perf_counter()
        await bounded(count, concurrency, fetch)
        return time.perf_counter() - started


async def through_inbound(base: str, workdir: Path, count: int, size: int, concurrency: int) -> dict[str, float]:
    ledger = Ledger.open(f"sqlite:///{workdir / 'ledger.sqlite3'}")
    await ledger.upgrade()
    config = with_media(settings(prefix="bench", ledger=LedgerSettings(url="sqlite:///unused")),
                        media_settings(workdir / "media", max_file_bytes=size, max_message_bytes=size))
    publisher = InMemoryPublisher()
    metrics = Metrics()
    async with guarded_session(config.media.fetch_allowed_networks) as http:  # as the bridge fetches
        media = InboundMedia(config, MediaFetcher(http, LocalStore(workdir / "media"), config.media), ledger,
                             metrics)
        handler = InboundHandler(config, publisher, ledger, metrics, media)

        async def handle(i: int) -> None:
            message = InboundMessage(tenant="acme", config_id="main", mdr_id=f"mdr2-bench-{i}",
                                     from_=f"+1206555{i:04d}", to=DID_MAIN, body="picture", is_mms=True,
                                     media=(Media(url=f"{base}/a/{i}?size={size}", mime_type="image/jpeg"),))
            await handler.handle(message, CONTEXT)
            publisher.published.clear()  # the broker's job: nothing kept here per message

        warm = max(1, count // 10)
        await bounded(warm, concurrency, handle)
        before, sampler = rss_mb(), Sampler()
        sampler.start()
        started = time.perf_counter()
        await bounded(count - warm, concurrency, lambda i: handle(warm + i))
        seconds = time.perf_counter() - started
        await sampler.stop()
        after = rss_mb()
    await ledger.close()
    return {"before": before, "peak": sampler.peak, "after": after, "seconds": seconds, "measured": count - warm}


async def main(args: argparse.Namespace) -> dict[str, float]:
    logs.configure(LoggingSettings(level="warning"))  # a line per message would be measured too
    port = free_port()
    server = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # readiness, up to 60 s
                try:
                    async with http.get(f"{base}/a/0?size=1"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
        size = int(args.mb * 1024 * 1024)
        with tempfile.TemporaryDirectory(prefix="smsbridge-bench-media-") as workdir:
            stage = await through_inbound(base, Path(workdir), args.messages, size, args.concurrency)
            bare_s = await bare_download(base, int(stage["measured"]), size, args.concurrency)
            to_file_s = await bare_download(base, int(stage["measured"]), size, args.concurrency, Path(workdir))
    finally:
        server.terminate()
        await server.wait()
    mb = stage["measured"] * size / 1024 / 1024
    return {**stage, "stage_mb_s": mb / stage["seconds"], "bare_mb_s": mb / bare_s, "bare_to_file_mb_s": mb / to_file_s,
            "peak_vs_before": stage["peak"] / stage["before"], "after_vs_before": stage["after"] / stage["before"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve)
    else:
        result = asyncio.run(main(parsed))
        print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=1))
        ok = result["peak_vs_before"] <= 1.10 and result["after_vs_before"] <= 1.10
        print(f"RSS {result['before']:.1f} MB → peak {result['peak']:.1f} MB, after {result['after']:.1f} MB "
              f"({'flat' if ok else 'NOT flat'} within 10%); inbound stage {result['stage_mb_s']:.1f} MB/s vs bare "
              f"aiohttp {result['bare_mb_s']:.1f} MB/s (bytes dropped), {result['bare_to_file_mb_s']:.1f} MB/s "
              "(written to files)")
        sys.exit(0 if ok else 1)
