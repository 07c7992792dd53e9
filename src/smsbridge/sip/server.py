"""The `sip` role: phones text out by SIP MESSAGE (UDP and TCP) through their PBX or proxy.

A MESSAGE becomes an outbound request on the broker and is answered 202 only once the broker
confirmed it (503 with Retry-After while it cannot). A retransmission of the same transaction
(Call-ID + CSeq) gets the cached final answer and is never a second text; the request's
`client_message_id` is derived from the same key, so even a retransmission reaching another
intake process is dropped by the outbound stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import encoder
from smsbridge.ledger import Ledger
from smsbridge.sip import intake
from smsbridge.sip.auth import PeerAuth
from smsbridge.sip.message import BodyTooLarge, SipMessage, SipParseError, StreamFramer, parse, salvage
from smsbridge.sip.responses import response

log = structlog.get_logger("smsbridge.sip_intake")
MAX_IN_FLIGHT = 1000  # texts being decided at once; beyond it a request gets 503 with Retry-After
TCP_IDLE_S = 300.0  # a TCP connection silent this long is closed (phones and PBXs send keep-alives)
_Reply = Callable[[bytes], object]
ANSWER_TTL_S = 300.0  # far beyond Timer F (32 s): any retransmission finds its answer
MAX_ANSWERS = 50_000


class AnswerCache:
    """Final answers by transaction key, for retransmissions; oldest dropped first."""

    def __init__(self) -> None:
        self._answers: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        found = self._answers.get(key)
        return None if found is None else found[1]

    def put(self, key: str, data: bytes) -> None:
        now = time.monotonic()
        self._answers[key] = (now, data)
        while self._answers and (len(self._answers) > MAX_ANSWERS
                                 or next(iter(self._answers.values()))[0] < now - ANSWER_TTL_S):
            self._answers.popitem(last=False)


class SipIntake:
    def __init__(self, settings: Settings, publisher: Publisher, ledger: Ledger) -> None:
        self._settings = settings
        self._publisher = publisher
        self._ledger = ledger
        self._auth = PeerAuth(settings.sip_intake)
        self._answers = AnswerCache()
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.port = 0
        self.retransmissions = 0  # answered from the cache, not sent on again

    @property
    def in_flight(self) -> int:
        """Texts being decided now (waiting for the ledger or the broker's confirm)."""
        return len(self._in_flight)

    async def start(self) -> None:
        cfg = self._settings.sip_intake
        for _ in range(20 if cfg.port == 0 else 1):  # port 0: a UDP port whose TCP twin is free too
            try:
                await self._listen(cfg.host, cfg.port)
                break
            except OSError:
                if cfg.port != 0:
                    raise
        else:
            raise OSError("no port free for UDP and TCP alike")
        log.info("sip intake listening", host=cfg.host, port=self.port, peers=len(cfg.peers))

    async def _listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
        chosen = int(udp.get_extra_info("sockname")[1])
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, host, chosen)
        except OSError:
            udp.close()
            raise
        self._udp, self.port = udp, chosen

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    def spawn(self, data: bytes, source: str, reply: _Reply) -> None:
        task = asyncio.create_task(self._serve(data, source, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, data: bytes, source: str, reply: _Reply) -> None:
        try:
            message = parse(data)
        except SipParseError as exc:
            readable = salvage(data)
            if readable is not None:  # a request we can answer: say what is wrong instead of timing out
                why = intake.Refusal(400, f"Bad Request ({str(exc).split(':')[0]})")  # never the line itself
                reply(self._refuse(readable, intake.transaction_key(readable, source), why))
            return  # not SIP: nothing to answer
        answer = await self.answer(message, source)
        if answer is not None:
            reply(answer)

    async def answer(self, message: SipMessage, source: str) -> bytes | None:
        """The bytes to send back, or None (a response, or a retransmission still being handled)."""
        if message.is_response:
            return None
        key = intake.transaction_key(message, source)
        cached = self._answers.get(key)
        if cached is not None:
            self.retransmissions += 1
            log.info("sip retransmission answered from cache", outcome="retransmission")
            return cached
        if key in self._in_flight:
            return None  # the first copy's answer will go out; UDP senders retransmit
        if len(self._in_flight) >= MAX_IN_FLIGHT:  # a flood: refuse at once rather than pile up work
            log.warning("sip text refused: too many in flight", outcome="refused", in_flight=len(self._in_flight))
            return response(message, 503, "Service Unavailable", key, (("Retry-After", "1"),))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            data, final = await self._decide(message, source, key)
            if final:
                self._answers.put(key, data)
            future.set_result(data)
            return data
        finally:
            del self._in_flight[key]
            if not future.done():
                future.cancel()

    async def _decide(self, message: SipMessage, source: str, key: str) -> tuple[bytes, bool]:
        """(answer, cacheable): challenges and 503s are not final for the transaction's cache."""
        if message.method == "OPTIONS":
            return response(message, 200, "OK", key, (("Allow", "MESSAGE, OPTIONS"),)), True
        if message.method != "MESSAGE":
            return response(message, 405, "Method Not Allowed", key, (("Allow", "MESSAGE, OPTIONS"),)), True
        checked = self._auth.check(message, source)
        if isinstance(checked, intake.Refusal):
            final = checked.status != 407
            return self._refuse(message, key, checked), final
        refusal_or_addressed = intake.address(message, checked.tenant, self._settings)
        if isinstance(refusal_or_addressed, intake.Refusal):
            return self._refuse(message, key, refusal_or_addressed), True
        text = intake.body_text(message)
        if isinstance(text, intake.Refusal):
            return self._refuse(message, key, text), True
        return await self._publish(message, key, refusal_or_addressed, text)

    async def _publish(self, message: SipMessage, key: str, addressed: intake.Addressed,
                       text: str) -> tuple[bytes, bool]:
        last_did = None
        if addressed.did is None and self._several_dids(addressed.tenant):  # one DID: nothing to choose
            with contextlib.suppress(Exception):  # no ledger: the outbound rule's default DID
                last_did = await self._ledger.last_did(addressed.tenant, addressed.to, addressed.extension)
        request = intake.request(addressed, text, key, last_did)
        refusal = intake.check(request, self._settings)
        if refusal is not None and last_did is not None:  # a guess the rules refuse: the rule's default DID then
            fallback = intake.request(addressed, text, key, None)
            if intake.check(fallback, self._settings) is None:
                request, refusal = fallback, None
        if refusal is not None:
            return self._refuse(message, key, refusal), True
        prefix = self._settings.broker.prefix
        try:
            await self._publisher.publish(names.requests_exchange(prefix), names.request_routing_key(addressed.tenant),
                                          encoder.encode(request), message_id=request.client_message_id)
        except BrokerUnavailable:
            retry = str(self._settings.sip_intake.retry_after_s)
            log.warning("sip text not taken: broker unavailable", outcome="unavailable", status=503)
            return response(message, 503, "Service Unavailable", key, (("Retry-After", retry),)), False
        log.info("sip text accepted", outcome="accepted", status=202, extension=addressed.extension,
                 client_message_id=request.client_message_id)
        return response(message, 202, "Accepted", key), True

    def _several_dids(self, tenant: str) -> bool:
        return sum(len(c.dids) for c in self._settings.configs_of(tenant)) > 1

    def _refuse(self, message: SipMessage, key: str, refusal: intake.Refusal) -> bytes:
        log.info("sip text refused", outcome="refused", status=refusal.status, why=refusal.reason)
        return response(message, refusal.status, refusal.reason, key, refusal.headers)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer, source = StreamFramer(), str(writer.get_extra_info("peername")[0])
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):  # a connection that sends nothing is closed
                    data = await reader.read(65536)
                if not data:
                    break
                for message in framer.feed(data):
                    self.spawn(message.encode(), source, writer.write)
        except BodyTooLarge as exc:  # the rest of the stream cannot be framed: answer, then close
            refusal = intake.Refusal(413, "Request Entity Too Large")
            writer.write(self._refuse(exc.head, intake.transaction_key(exc.head, source), refusal))
        except (SipParseError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, intake_: SipIntake) -> None:
        self.intake = intake_
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        transport = self.transport
        if transport is None:
            return
        self.intake.spawn(data, str(addr[0]), lambda answer: transport.sendto(answer, addr))
