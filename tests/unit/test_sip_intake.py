"""The SIP intake's answers, over real UDP and TCP on loopback, with an in-memory broker."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from smsbridge.config import OutboundRule, Settings, SipIntakeSettings, SipPeer, SmsConfig
from smsbridge.events import OutboundRequest
from smsbridge.secret import Secret
from smsbridge.sip import server
from smsbridge.sip.server import SipIntake
from smsbridge.testing.broker import InMemoryPublisher
from tests.support.wait import eventually

DID = "+12065550100"
OTHER_DID = "+12065550101"


class FakeLedger:
    def __init__(self, last: str | None = None) -> None:
        self.last = last
        self.asked = 0

    async def last_did(self, tenant: str, number: str, extension: str) -> str | None:
        self.asked += 1
        return self.last


def settings(*peers: SipPeer, dids: tuple[str, ...] = (DID, OTHER_DID)) -> Settings:
    config = SmsConfig(id="main", tenant="acme", access_key=Secret("a"), secret_key=Secret("s"),
                       webhook_token=Secret("t" * 30), dids=list(dids))
    return Settings(sms_configs=[config], outbound_rules=[OutboundRule(config="main", extensions=["101"])],
                    sip_intake=SipIntakeSettings(port=0, peers=list(peers) or [SipPeer(tenant="acme",
                                                                                        address="127.0.0.1")]))


Started = tuple[SipIntake, InMemoryPublisher]


async def start(s: Settings, ledger: FakeLedger | None = None) -> Started:
    publisher = InMemoryPublisher()
    intake = SipIntake(s, publisher, ledger or FakeLedger())  # type: ignore[arg-type]
    await intake.start()
    return intake, publisher


@pytest.fixture
async def running() -> AsyncIterator[Started]:
    started = await start(settings())
    yield started
    await started[0].stop()


def message(*, ruri_user: str = "+12065550199", ext: str = "101", call_id: str = "c1", cseq: int = 1,
            body: bytes = "Hi ✓".encode(), content_type: str = "text/plain;charset=UTF-8",
            extra: str = "") -> bytes:
    head = (f"MESSAGE sip:{ruri_user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{cseq}x\r\n"
            f"From: <sip:{ext}@pbx.test>;tag=ft\r\nTo: <sip:{ruri_user}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)


async def udp(port: int, *datagrams: bytes, answers: int | None = None) -> list[bytes]:
    loop = asyncio.get_running_loop()
    client = Client()
    transport, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=("127.0.0.1", port))
    try:
        got = []
        for data in datagrams:
            transport.sendto(data)
            got.append(await asyncio.wait_for(client.answers.get(), 30))
        return got[: answers or len(got)]
    finally:
        transport.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def requests(publisher: InMemoryPublisher) -> list[OutboundRequest]:
    return [msgspec.json.decode(p.body, type=OutboundRequest) for p in publisher.published]


async def test_a_text_is_published_then_answered_202(running: Started) -> None:
    intake, publisher = running
    (answer,) = await udp(intake.port, message())
    assert status(answer) == 202
    assert b"Contact" not in answer and answer.endswith(b"Content-Length: 0\r\n\r\n")
    (req,) = requests(publisher)
    assert (req.tenant, req.from_extension, req.to, req.body, req.from_did) == ("acme", "101", "+12065550199",
                                                                                "Hi ✓", None)
    assert publisher.published[0].routing_key == "outbound.acme"
    assert req.client_message_id.startswith("sip-")


async def test_a_retransmission_is_one_text_with_the_same_answer(running: Started) -> None:
    intake, publisher = running
    first, again = await udp(intake.port, message(), message())
    assert first == again and status(first) == 202
    assert len(publisher.published) == 1
    (new,) = await udp(intake.port, message(cseq=2))  # a new transaction is a new text
    assert status(new) == 202 and len(publisher.published) == 2


async def test_a_did_prefix_chooses_the_did(running: Started) -> None:
    intake, publisher = running
    await udp(intake.port, message(ruri_user=f"{OTHER_DID}+12065550199"))
    (req,) = requests(publisher)
    assert (req.from_did, req.to) == (OTHER_DID, "+12065550199")


async def test_without_a_prefix_the_did_last_used_with_that_number() -> None:
    intake, publisher = await start(settings(), FakeLedger(last=OTHER_DID))
    try:
        await udp(intake.port, message())
    finally:
        await intake.stop()
    assert requests(publisher)[0].from_did == OTHER_DID


async def test_a_tenant_with_one_did_does_not_ask_the_ledger() -> None:
    ledger = FakeLedger(last=OTHER_DID)
    intake, publisher = await start(settings(dids=(DID,)), ledger)
    try:
        (answer,) = await udp(intake.port, message())
    finally:
        await intake.stop()
    assert status(answer) == 202 and ledger.asked == 0 and requests(publisher)[0].from_did is None


async def test_broker_down_is_503_with_retry_after_and_nothing_cached(running: Started) -> None:
    intake, publisher = running
    publisher.available = False
    (answer,) = await udp(intake.port, message())
    assert status(answer) == 503 and b"Retry-After: 5\r\n" in answer
    publisher.available = True
    (answer,) = await udp(intake.port, message())  # the phone's retry of the same text goes through
    assert status(answer) == 202 and len(publisher.published) == 1


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"ext": "999"}, 404),
    ({"content_type": "application/im-iscomposing+xml"}, 415),
    ({"body": b"\xff\xfe bad"}, 488),
    ({"ruri_user": "12"}, 484),
])
async def test_refusals(running: Started, kwargs: dict[str, Any], expected: int) -> None:
    intake, publisher = running
    (answer,) = await udp(intake.port, message(**kwargs))
    assert status(answer) == expected
    assert publisher.published == []


async def test_an_unknown_peer_is_403() -> None:
    intake, publisher = await start(settings(SipPeer(tenant="acme", address="127.0.0.2")))
    try:
        (answer,) = await udp(intake.port, message())
    finally:
        await intake.stop()
    assert status(answer) == 403 and publisher.published == []


def digest_header(challenge: bytes, password: str, uri: str = "sip:+12065550199@127.0.0.1") -> str:
    realm = re.search(rb'realm="([^"]+)"', challenge).group(1).decode()  # type: ignore[union-attr]
    nonce = re.search(rb'nonce="([^"]+)"', challenge).group(1).decode()  # type: ignore[union-attr]
    ha1 = hashlib.md5(f"kam:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"MESSAGE:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return (f'Proxy-Authorization: Digest username="kam", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}"\r\n')


@pytest.mark.parametrize(("password", "expected"), [("kampw", 202), ("wrong", 403)])
async def test_a_digest_peer_is_challenged_then_checked(password: str, expected: int) -> None:
    peer = SipPeer(tenant="acme", username="kam", password=Secret("kampw"))
    intake, publisher = await start(settings(peer))
    try:
        (challenge,) = await udp(intake.port, message())
        assert status(challenge) == 407
        (answer,) = await udp(intake.port, message(cseq=2, extra=digest_header(challenge, password)))
    finally:
        await intake.stop()
    assert status(answer) == expected
    assert len(publisher.published) == (1 if expected == 202 else 0)


async def test_credentials_seen_on_one_text_cannot_send_to_another_number() -> None:
    """A captured Proxy-Authorization (same nonce, still fresh) replayed with another Request-URI:
    the credentials name the URI they were made for, so the replay is refused."""
    peer = SipPeer(tenant="acme", username="kam", password=Secret("kampw"))
    intake, publisher = await start(settings(peer))
    try:
        (challenge,) = await udp(intake.port, message())
        seen = digest_header(challenge, "kampw")
        (first,) = await udp(intake.port, message(cseq=2, extra=seen))
        (replayed,) = await udp(intake.port, message(call_id="c2", cseq=2, ruri_user="+12065550142", extra=seen))
    finally:
        await intake.stop()
    assert (status(first), status(replayed)) == (202, 403)
    assert [r.to for r in requests(publisher)] == ["+12065550199"]


async def test_tcp_carries_a_text_too(running: Started) -> None:
    intake, publisher = running
    reader, writer = await asyncio.open_connection("127.0.0.1", intake.port)
    try:
        # above UDP's 1,300 bytes, within the 10 SMS segments the outbound rules allow
        writer.write(message(body=("long text " * 140).encode()))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()
    assert status(answer) == 202
    assert requests(publisher)[0].body == "long text " * 140


def two_tenant_settings() -> Settings:
    """acme (extension 101, DIDs DID and OTHER_DID) and globex (any extension, its own DID), each
    known by its PBX's address."""
    acme = settings()
    globex = SmsConfig(id="gx", tenant="globex", access_key=Secret("a2"), secret_key=Secret("s2"),
                       webhook_token=Secret("g" * 30), dids=[GLOBEX_DID])
    peers = [SipPeer(tenant="acme", address="127.0.0.1"), SipPeer(tenant="globex", address="127.0.0.2")]
    return msgspec.structs.replace(
        acme, sms_configs=[*acme.sms_configs, globex],
        outbound_rules=[OutboundRule(config="main", extensions=["101"], dids=[DID, OTHER_DID]),
                        OutboundRule(config="gx", extensions=["201", "*"])],
        sip_intake=SipIntakeSettings(port=0, peers=peers))


GLOBEX_DID = "+13125550100"


async def udp_from(port: int, source: str, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    client = Client()
    transport, _ = await loop.create_datagram_endpoint(lambda: client, local_addr=(source, 0),
                                                       remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(data)
        return await asyncio.wait_for(client.answers.get(), 30)
    finally:
        transport.close()


@pytest.mark.parametrize(("source", "kwargs", "expected"), [
    ("127.0.0.1", {"ruri_user": f"{GLOBEX_DID}+12065550199"}, 403),  # acme sends from globex's DID
    ("127.0.0.2", {"ruri_user": f"{DID}+12065550199", "ext": "201"}, 403),  # and globex from acme's
    ("127.0.0.1", {"ext": "201"}, 404),  # From names globex's extension: not one of acme's
    ("127.0.0.1", {"ruri_user": "+18765550123"}, 403),  # Jamaica: refused before any attempt
    ("127.0.0.1", {"ruri_user": "+12065550199", "body": ("x" * 10_001).encode()}, 513),  # beyond limits.BODY_CHARS
    ("127.0.0.1", {"body": ("✓" * 800).encode()}, 513),  # beyond the 10 segments the rules allow
    ("127.0.0.1", {"content_type": "text/plain; charset=ISO-8859-1"}, 415),
    ("127.0.0.2", {"ext": "2\x01x"}, 400),  # a control character in the From user ("*" lets any name in)
])
async def test_tenant_and_outbound_rules_answer_at_once(source: str, kwargs: dict[str, Any], expected: int) -> None:
    intake, publisher = await start(two_tenant_settings())
    try:
        answer = await udp_from(intake.port, source, message(**kwargs))
    finally:
        await intake.stop()
    assert status(answer) == expected, answer
    assert publisher.published == []
    assert b"1206555" not in answer.split(b"\r\n", 1)[0] and b"x" * 20 not in answer  # no number, no text


async def test_each_tenant_publishes_under_its_own_key() -> None:
    intake, publisher = await start(two_tenant_settings())
    try:
        acme = await udp_from(intake.port, "127.0.0.1", message(call_id="a"))
        globex = await udp_from(intake.port, "127.0.0.2", message(call_id="g", ext="201"))
    finally:
        await intake.stop()
    assert (status(acme), status(globex)) == (202, 202)
    published = zip(publisher.published, requests(publisher), strict=True)
    keys = [(p.routing_key, r.tenant, r.from_extension) for p, r in published]
    assert keys == [("outbound.acme", "acme", "101"), ("outbound.globex", "globex", "201")]


async def test_another_peer_reusing_a_transactions_ids_gets_its_own_answer_not_the_cached_one() -> None:
    """Call-ID, CSeq and From tag are the sender's choice: the same triple from another peer is
    another transaction (before, globex got acme's cached 202 and its text was dropped)."""
    intake, publisher = await start(two_tenant_settings())
    try:
        acme = await udp_from(intake.port, "127.0.0.1", message(call_id="same", ext="101"))
        globex = await udp_from(intake.port, "127.0.0.2", message(call_id="same", ext="201"))
    finally:
        await intake.stop()
    assert (status(acme), status(globex)) == (202, 202)
    assert [(r.tenant, r.from_extension) for r in requests(publisher)] == [("acme", "101"), ("globex", "201")]
    assert intake.retransmissions == 0


@pytest.mark.parametrize("data", [
    message().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"),  # a header line without a colon
    message().replace(b"Content-Length: 6", b"Content-Length: 600"),  # a datagram shorter than it says
    message().replace(b"Content-Length: 6", b"Content-Length: lots"),
])
async def test_a_malformed_request_is_answered_400(running: Started, data: bytes) -> None:
    intake, publisher = running
    (answer,) = await udp(intake.port, data)
    assert status(answer) == 400 and b"Call-ID: c1\r\n" in answer
    assert b"Max-Forwards 70" not in answer  # the offending line is not echoed
    assert publisher.published == []


async def test_garbage_gets_no_answer_and_the_intake_keeps_serving(running: Started) -> None:
    intake, publisher = running
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", intake.port))
    for junk in (b"", b"\x00" * 2000, b"GET / HTTP/1.1\r\n\r\n", b"MESSAGE sip:x SIP/2.0\r\n\r\n", os.urandom(1400)):
        transport.sendto(junk)
    transport.close()
    (answer,) = await udp(intake.port, message())
    assert status(answer) == 202 and len(publisher.published) == 1


async def test_a_huge_content_length_over_tcp_is_413_and_the_connection_closed(running: Started) -> None:
    intake, publisher = running
    reader, writer = await asyncio.open_connection("127.0.0.1", intake.port)
    try:
        writer.write(message().replace(b"Content-Length: 6", b"Content-Length: 1000000000"))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the intake
    finally:
        writer.close()
    assert status(answer) == 413 and publisher.published == []
    (again,) = await udp(intake.port, message(call_id="after"))  # the intake still serves
    assert status(again) == 202


async def test_a_did_last_used_that_the_rule_does_not_allow_gives_way_to_the_default() -> None:
    """The customer texted a DID the extension may not send from: the reply goes from the rule's
    DIDs instead of being refused (only an explicit DID+number prefix is held to the letter)."""
    s = settings()
    s = msgspec.structs.replace(s, outbound_rules=[OutboundRule(config="main", extensions=["101"], dids=[DID])])
    intake, publisher = await start(s, FakeLedger(last=OTHER_DID))
    try:
        (guessed,) = await udp(intake.port, message())
        (explicit,) = await udp(intake.port, message(call_id="c2", ruri_user=f"{OTHER_DID}+12065550199"))
    finally:
        await intake.stop()
    assert (status(guessed), status(explicit)) == (202, 403)
    (req,) = requests(publisher)
    assert req.from_did is None  # the outbound stage picks the rule's DID


class StuckBroker(InMemoryPublisher):
    """A broker that takes publishes but confirms none until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> None:
        await self.release.wait()
        await super().publish(exchange, routing_key, body, **kwargs)


async def test_a_flood_beyond_the_in_flight_cap_gets_503_at_once_and_the_texts_in_flight_finish(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_IN_FLIGHT", 2)
    publisher = StuckBroker()
    intake = SipIntake(settings(), publisher, FakeLedger())  # type: ignore[arg-type]
    await intake.start()
    try:
        waiting = [asyncio.create_task(udp_from(intake.port, "127.0.0.1", message(call_id=f"f{n}")))
                   for n in range(2)]
        await eventually(lambda: intake.in_flight == 2, what="two texts waiting for the broker")
        third = await udp_from(intake.port, "127.0.0.1", message(call_id="f2"))
        assert status(third) == 503 and b"Retry-After: 1" in third
        publisher.release.set()
        assert [status(a) for a in await asyncio.gather(*waiting)] == [202, 202]
    finally:
        await intake.stop()
    assert len(requests(publisher)) == 2  # the refused third was not published
