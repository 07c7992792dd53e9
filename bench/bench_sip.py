"""SIP benchmarks, each beside a bare reference in the same run (`python bench/bench_sip.py`).

1. Deliveries/s through a real Kamailio to a registered test phone: the `sip` target (SipAdapter:
   split check, digest, transactions) against a bare MESSAGE sender doing the same protocol steps
   (one 407, one authenticated MESSAGE) with pre-built bytes and no checks. Target: ratio >= 0.8.
2. Intake: MESSAGE -> request confirmed by RabbitMQ -> 202, per second, against a bare UDP server
   that publishes every datagram with a confirm and answers 202 (the receiver benchmark's kind of
   reference).
Rounds alternate between the two sides so a drift of the machine touches both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))  # report

import aio_pika
import msgspec
from tests.support.kamailio import DOMAIN, Kamailio
from tests.support.ports import free_port
from tests.support.sip_phone import Phone

from report import row
from smsbridge import logs
from smsbridge.bridge import open_ledger
from smsbridge.broker import names, topology
from smsbridge.broker.publisher import Publisher
from smsbridge.config import (
    LedgerSettings,
    LoggingSettings,
    OutboundRule,
    Settings,
    SipIntakeSettings,
    SipPeer,
    SipTarget,
    SmsConfig,
)
from smsbridge.errors import RetryableError
from smsbridge.events import InboundDelivery
from smsbridge.pbx.sip import SipAdapter
from smsbridge.secret import Secret
from smsbridge.sip.server import SipIntake

USERS = {"1001": "ext1001pw", "bridge": "bridgepw"}
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
Work = Callable[[int], Awaitable[None]]
FAILURES = [0]


async def rate(work: Work, *, seconds: float, concurrency: int) -> float:
    """Operations per second with `concurrency` closed-loop workers."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(number: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < deadline:
            try:
                await work(number * 1_000_000 + i)
                done += 1
            except (RetryableError, AssertionError, TimeoutError):
                FAILURES[0] += 1  # a loaded proxy answers 500/408 now and then: counted, not fatal
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.monotonic() - started)


class BareSender(asyncio.DatagramProtocol):
    """MESSAGE over UDP with the least work: bytes from a template, answers matched by Call-ID."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        found = re.search(rb"\r\nCall-ID: ([^\r]+)", data)
        future = self.waiting.get(found.group(1)) if found else None
        if future is not None and not future.done() and not data.startswith(b"SIP/2.0 1"):
            future.set_result(data)

    async def ask(self, data: bytes, call_id: bytes) -> bytes:
        assert self.transport is not None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        try:
            for _ in range(20):  # UDP: resend every 0.5 s until answered (what Timer E does, simplified)
                self.transport.sendto(data)
                done, _ = await asyncio.wait({future}, timeout=0.5)
                if done:
                    return future.result()
            raise TimeoutError("no answer")
        finally:
            del self.waiting[call_id]

    async def send(self, number: int) -> None:
        local = self.transport.get_extra_info("sockname") if self.transport else ("127.0.0.1", 0)
        call_id = f"bare-{number}-{secrets.token_hex(4)}"
        first = await self.ask(self._request(local, call_id, 1, None), call_id.encode())
        nonce = re.search(rb'nonce="([^"]+)"', first).group(1).decode()  # type: ignore[union-attr]
        uri = f"sip:1001@{DOMAIN}"
        ha1 = hashlib.md5(f"bridge:{DOMAIN}:{USERS['bridge']}".encode()).hexdigest()
        ha2 = hashlib.md5(f"MESSAGE:{uri}".encode()).hexdigest()
        response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        auth = (f'Digest username="bridge", realm="{DOMAIN}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}", algorithm=MD5')
        final = await self.ask(self._request(local, call_id, 2, auth), call_id.encode())
        assert final.startswith(b"SIP/2.0 200"), final[:40]

    @staticmethod
    def _request(local: tuple[str, int], call_id: str, cseq: int, auth: str | None) -> bytes:
        body = b"Benchmark text"
        lines = [f"MESSAGE sip:1001@{DOMAIN} SIP/2.0",
                 f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(6)};rport",
                 "Max-Forwards: 70", f"From: <sip:+12065550199@{DOMAIN}>;tag={call_id}", f"To: <sip:1001@{DOMAIN}>",
                 f"Call-ID: {call_id}", f"CSeq: {cseq} MESSAGE", "Content-Type: text/plain;charset=UTF-8"]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BENCH_SHM_MB = 512
BENCH_WAIT_MS = 1000


async def bench_delivery(seconds: float, rounds: int, concurrency: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="sbbench-sip-"))
    # Each answered MESSAGE keeps its transaction in Kamailio's shared memory for tm's wt_timer (5 s
    # by default): at several thousand texts/s that outgrows the suite's 128 MB, and Kamailio drops
    # requests unanswered. The benchmark measures the bridge, not the proxy's memory: more memory
    # and a 1 s wait (still far above a loopback round trip) keep the proxy out of the way.
    kamailio = Kamailio(directory, free_port(), USERS, store_offline=False, shm_mb=BENCH_SHM_MB,
                        wait_ms=BENCH_WAIT_MS)
    await kamailio.start()
    phone = Phone("1001", USERS["1001"], kamailio.port)
    await phone.start(free_port())
    try:
        assert await phone.register() == 200
        adapter = SipAdapter(SipTarget(tenant="acme", host="127.0.0.1", port=kamailio.port, domain=DOMAIN,
                                       username="bridge", password=Secret(USERS["bridge"]), transport="udp"))
        loop = asyncio.get_running_loop()
        bare = BareSender(kamailio.port)
        transport, _ = await loop.create_datagram_endpoint(lambda: bare, remote_addr=("127.0.0.1", kamailio.port))

        async def ours(number: int) -> None:
            await adapter.deliver(InboundDelivery(
                tenant="acme", config_id="main", mdr_id=f"mdr2-{number}", from_="+12065550199", to="+12065550100",
                extension="1001", body="Benchmark text", received_at=datetime.now(UTC)))

        sides: dict[str, list[float]] = {"real": [], "reference": []}
        for warm in (ours, bare.send):
            await rate(warm, seconds=0.5, concurrency=concurrency)
        for number in range(rounds):
            order = [("real", ours), ("reference", bare.send)]
            for side, work in order if number % 2 == 0 else reversed(order):
                sides[side].append(await rate(work, seconds=seconds, concurrency=concurrency))
        transport.close()
        await adapter.close()
    finally:
        await phone.stop()
        await kamailio.stop()
    real, ref = sum(sides["real"]) / rounds, sum(sides["reference"]) / rounds
    # a proxy short of shared memory drops requests unanswered: the figures would be its, not ours
    starved = kamailio.log.read_text(errors="replace").count("out of mem")
    return {"sip_deliveries_per_s": real, "bare_message_per_s": ref, "ratio": real / ref,
            "proxy_out_of_memory_errors": starved}


class BareIntake(asyncio.DatagramProtocol):
    """Every datagram published with a confirm, then a fixed 202: the least an intake can do."""

    def __init__(self, publisher: Publisher, exchange: str) -> None:
        self.publisher, self.exchange = publisher, exchange
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        task = asyncio.create_task(self._take(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _take(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        await self.publisher.publish(self.exchange, "outbound.acme", data)
        call_id = re.search(rb"\r\nCall-ID: [^\r]+", data)
        if self.transport is not None and call_id:
            self.transport.sendto(b"SIP/2.0 202 Accepted" + call_id.group(0) + b"\r\nContent-Length: 0\r\n\r\n", addr)


async def bench_intake(seconds: float, rounds: int, concurrency: int, amqp: str = AMQP) -> dict[str, float]:
    prefix = f"sbtest-bench-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(amqp)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await topology.declare(channel, prefix, delivery_limit=20, accounts={})
    publisher = Publisher(channel, timeout=5)
    config = SmsConfig(id="main", tenant="acme", access_key=Secret("a"), secret_key=Secret("s"),
                       webhook_token=Secret("t" * 30), dids=["+12065550100"])
    settings = Settings(sms_configs=[config], outbound_rules=[OutboundRule(config="main", extensions=["101"])],
                        sip_intake=SipIntakeSettings(port=free_port(), peers=[SipPeer(tenant="acme",
                                                                                      address="127.0.0.1")]))
    settings = msgspec_replace_prefix(settings, prefix)
    directory = Path(tempfile.mkdtemp(prefix="sbbench-intake-"))
    ledger = await open_ledger(LedgerSettings(url=f"sqlite:///{directory}/ledger.sqlite3"))
    intake = SipIntake(settings, publisher, ledger)
    await intake.start()
    loop = asyncio.get_running_loop()
    bare = BareIntake(publisher, names.requests_exchange(prefix))
    bare_transport, _ = await loop.create_datagram_endpoint(lambda: bare, local_addr=("127.0.0.1", 0))
    bare_port = bare_transport.get_extra_info("sockname")[1]
    client = BareSender(0)
    client_transport, _ = await loop.create_datagram_endpoint(lambda: client, local_addr=("127.0.0.1", 0))

    def phone_text(port: int) -> Work:
        async def send(number: int) -> None:
            call_id = f"in-{number}-{secrets.token_hex(4)}"
            body = b"Reply from a phone"
            data = (f"MESSAGE sip:+12065550199@127.0.0.1 SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id}\r\n"
                    f"From: <sip:101@pbx.test>;tag={call_id}\r\nTo: <sip:+12065550199@127.0.0.1>\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            assert client.transport is not None
            future: asyncio.Future[bytes] = loop.create_future()
            client.waiting[call_id.encode()] = future
            client.transport.sendto(data, ("127.0.0.1", port))
            try:
                answer = await asyncio.wait_for(future, 10)
            finally:
                del client.waiting[call_id.encode()]
            assert answer.startswith(b"SIP/2.0 202"), answer[:40]
        return send

    sides: dict[str, list[float]] = {"real": [], "reference": []}
    work = {"real": phone_text(intake.port), "reference": phone_text(bare_port)}
    try:
        for side in work:
            await rate(work[side], seconds=0.5, concurrency=concurrency)
        for number in range(rounds):
            order = list(work) if number % 2 == 0 else list(reversed(work))
            for side in order:
                sides[side].append(await rate(work[side], seconds=seconds, concurrency=concurrency))
    finally:
        client_transport.close()
        bare_transport.close()
        await intake.stop()
        await ledger.close()
        await topology.delete(channel, prefix, accounts=[])
        await connection.close()
    real, ref = sum(sides["real"]) / rounds, sum(sides["reference"]) / rounds
    return {"intake_requests_per_s": real, "bare_publish_per_s": ref, "ratio": real / ref}


def msgspec_replace_prefix(settings: Settings, prefix: str) -> Settings:
    return msgspec.structs.replace(settings, broker=msgspec.structs.replace(settings.broker, prefix=prefix))


async def run(amqp: str, *, seconds: float, rounds: int, concurrency: int) -> None:
    """The short run `make bench` (bench/run.py) makes: both figures as rows of its table."""
    quiet()
    delivery = await bench_delivery(seconds, rounds, concurrency)
    ratio = delivery["ratio"]
    row("sip", f"{concurrency} at once: sip target deliveries/s through Kamailio", delivery["sip_deliveries_per_s"],
        delivery["bare_message_per_s"], unit="/s", target=">= 0.8 of bare", ok=ratio >= 0.8)
    row("sip", "proxy out of shared memory (requests dropped)", delivery["proxy_out_of_memory_errors"],
        target="0", ok=delivery["proxy_out_of_memory_errors"] == 0)
    intake = await bench_intake(seconds, rounds, concurrency, amqp)
    row("sip", f"{concurrency} at once: intake MESSAGE -> confirmed request/s", intake["intake_requests_per_s"],
        intake["bare_publish_per_s"], unit="/s", target=">= 0.8 of bare", ok=intake["ratio"] >= 0.8)
    row("sip", "failed operations (answered 408/500 or not at all)", FAILURES[0])


def quiet() -> None:
    """Production logging (JSON, one line per outcome) is part of the work measured: written nowhere."""
    logs.configure(LoggingSettings(format="json"), stream=open(os.devnull, "w"), cache=True)  # noqa: SIM115


async def main() -> None:
    quiet()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    figures = {"delivery": await bench_delivery(args.seconds, args.rounds, args.concurrency),
               "intake": await bench_intake(args.seconds, args.rounds, args.concurrency)}
    print(json.dumps({**figures, "failed_operations": FAILURES[0]}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
