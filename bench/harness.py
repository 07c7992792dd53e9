"""Processes, sinks and measurements shared by the benchmarks."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support.ports import free_port

from smsbridge.broker import names
from smsbridge.events import DispatchRequest
from smsbridge.ledger import Ledger
from smsbridge.ledger.store import engine_url
from smsbridge.testing.config import bridge_document, merge, secrets_env, write

ROOT = Path(__file__).resolve().parent.parent
# a start-up on a host with both cores busy (the suite runs --quick beside other work) takes seconds
START_TIMEOUT_S = 90
ENV = secrets_env("BENCH", access_key="AK-bench", secret_key="SK-bench",
                  webhook_token="bench-token-0123456789abcdefghij")
# the relay benchmark's three PBX clients
ENV.update({f"BENCH_RELAY_{n}": f"bench-relay-secret-{n}-0123456789abcdef" for n in range(3)})
ENV["BENCH_RELAY_ID_KEY"] = "bench-relay-id-key-0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Env:
    amqp: str
    workdir: Path
    prefix: str = field(default_factory=lambda: f"bench-{os.urandom(4).hex()}")
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    extra_queues: list[str] = field(default_factory=list)

    def sibling(self, name: str) -> Env:
        """Another environment beside this one: its own broker prefix, ledger and processes."""
        workdir = self.workdir / name
        workdir.mkdir(exist_ok=True)
        return Env(amqp=self.amqp, workdir=workdir)

    def extra_queue(self, name: str) -> str:
        """A queue outside the topology (the references'), deleted with it at the end."""
        queue = f"{self.prefix}.{name}"
        self.extra_queues.append(queue)
        return queue

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.workdir / 'ledger.db'}"

    def config(self, name: str, *, port: int = 0, api_base: str = "http://127.0.0.1:9", pbx_url: str =
               "http://127.0.0.1:9/none", sms_rate: int = 5, prefetch: int = 64,
               ledger: tuple[str, str] | None = None) -> Path:
        """`ledger`: (PostgreSQL URL, schema) instead of this environment's SQLite file."""
        doc = bridge_document(amqp_url=self.amqp, prefix=self.prefix, ledger_url=ledger[0] if ledger else
                              self.ledger_url, port=port or free_port(), secrets="BENCH", api_base=api_base,
                              pbx_url=pbx_url, account="bench")
        (main,) = doc["sms_configs"]
        return write(self.workdir / f"{name}.toml", merge(doc, {
            "ledger": {"schema": ledger[1]} if ledger else {},
            "broker": {"prefetch": prefetch},
            "logging": {"format": None, "level": "info"},  # production default: log lines are part of the cost
            "flowroute": {"request_dlrs": False, "timeout_s": None},
            "sms_configs": [{**main, "sms_per_second": sms_rate, "mms_per_second": 1}],
            "pbx_targets": [{"kind": "http", "tenant": "acme", "url": pbx_url, "timeout_s": 10}],
        }))

    async def bridge(self, config: Path, *roles: str, name: str) -> asyncio.subprocess.Process:
        log = self.workdir / f"{name}.log"
        args = [a for role in roles for a in ("--role", role)]
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smsbridge", "run", "--config", str(config), *args,
                env={**os.environ, **ENV, "PYTHONPATH": str(ROOT / "src")}, stdout=out, stderr=out)
        self.processes.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
            if '"bridge started"' in log.read_text():
                return proc
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{name} did not start within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")

    def fresh_ledger(self) -> None:
        """Each benchmark starts from an empty ledger, so one's rows do not slow the next."""
        for suffix in ("", "-wal", "-shm"):
            (self.workdir / f"ledger.db{suffix}").unlink(missing_ok=True)

    async def script(self, *args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "bench" / "reference.py"), *args,
                                                    stdout=asyncio.subprocess.PIPE)
        self.processes.append(proc)
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)  # as generous as a bridge start
        return proc

    async def stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def stop_all(self) -> None:
        for proc in self.processes:
            await self.stop(proc)
        self.processes.clear()


class PbxSink:
    """Counts deliveries and their end-to-end latency (webhook arrival → here)."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.first_at: float | None = None
        self.last_at = 0.0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _take(self, request: web.Request) -> web.Response:
        body = msgspec.json.decode(await request.read())
        received = msgspec.convert(body["received_at"], type=datetime)
        self.latencies.append(time.time() - received.timestamp())
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.last_at = time.monotonic()
        self.count += 1
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/pbx", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/pbx"

    def reset(self) -> None:
        self.count = 0
        self.latencies = []
        self.first_at = None

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


@asynccontextmanager
async def pg_schema(url: str) -> AsyncIterator[str]:
    """A throwaway schema in the PostgreSQL at `url` (a benchmark's own ledger), dropped afterwards."""
    name = f"bench_{os.urandom(5).hex()}"
    admin = create_async_engine(engine_url(url))
    try:
        async with admin.begin() as connection:
            await connection.execute(sa.schema.CreateSchema(name))
    except (OSError, sa.exc.DBAPIError) as exc:
        await admin.dispose()
        raise RuntimeError(f"PostgreSQL is not reachable at {url} (--pg): {exc!r}"[:300]) from None
    try:
        yield name
    finally:
        async with admin.begin() as connection:
            await connection.execute(sa.schema.DropSchema(name, cascade=True))
        await admin.dispose()


async def record_requests(ledger_url: str, requests: Iterable[DispatchRequest]) -> None:
    """Record dispatch requests in the ledger as the outbound worker leaves them (queued next)."""
    ledger = Ledger.open(ledger_url)
    try:
        await ledger.upgrade()
        for request in requests:
            await ledger.record_request(request)
    finally:
        await ledger.close()


async def together(*awaitables: Awaitable[Any]) -> list[Any]:
    """`asyncio.gather`, except that the first failure cancels the others (and waits for them)
    before it is raised. With a plain gather the rest go on: a benchmark's `finally` stops its
    processes while a sibling coroutine is still starting new ones, which then outlive the run."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


async def queue_depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    # The robust channel caches passive declares; ask the underlying channel for a live count.
    underlying = await channel.get_underlay_channel()
    return int((await underlying.queue_declare(queue, passive=True)).message_count or 0)


async def preload(channel: aio_pika.abc.AbstractChannel, queue: str, bodies: Iterable[bytes],
                  batch: int = 500, origin_key: str | None = None) -> int:
    """Publish straight into a stage queue (confirmed, in batches), as the previous stage would;
    `origin_key` as the bridge's own retries carry it (the outbound stage needs `outbound.<tenant>`)."""
    headers: dict[str, aio_pika.abc.FieldValue] = {names.H_ATTEMPT: 0, names.H_FIRST_SEEN: int(time.time() * 1000)}
    if origin_key:
        headers[names.H_ORIGIN_KEY] = origin_key
    exchange = channel.default_exchange
    pending: list[Any] = []
    count = 0
    for body in bodies:
        message = aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   content_type="application/json")
        pending.append(exchange.publish(message, routing_key=queue))
        count += 1
        if len(pending) >= batch:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return count


async def paced(channel: aio_pika.abc.AbstractChannel, queue: str, bodies: Iterable[bytes], rate: float,
                origin_key: str | None = None) -> int:
    """`preload` at `rate` messages/s, in tenth-of-a-second slices."""
    slice_size = max(1, int(rate / 10))
    started, sent, chunk = time.monotonic(), 0, []
    for body in bodies:
        chunk.append(body)
        if len(chunk) == slice_size:
            sent += await preload(channel, queue, chunk, origin_key=origin_key)
            chunk = []
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    return sent + await preload(channel, queue, chunk, origin_key=origin_key)



async def purge(channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
    await (await channel.get_underlay_channel()).queue_purge(queue)
