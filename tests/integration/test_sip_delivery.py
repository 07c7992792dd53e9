"""The `sip` delivery target against a real Kamailio, with a test phone registered behind it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smsbridge.config import SipTarget
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, Media
from smsbridge.pbx.sip import SipAdapter
from smsbridge.secret import Secret
from smsbridge.sip import digest, uac
from smsbridge.sip.transport import NextHop
from smsbridge.sip.uac import Credentials, MessageSender, Outgoing
from tests.support.kamailio import DOMAIN, Kamailio
from tests.support.ports import free_port
from tests.support.sip_phone import Phone
from tests.support.wait import eventually

USERS = {"1001": "ext1001pw", "bridge": "bridgepw"}


async def start_kamailio(tmp_path: Path, **options: Any) -> Kamailio:
    kamailio = Kamailio(tmp_path / "kamailio", free_port(), USERS, **options)
    await kamailio.start()
    return kamailio


@pytest.fixture
async def kamailio(tmp_path: Path) -> AsyncIterator[Kamailio]:
    server = await start_kamailio(tmp_path)
    yield server
    await server.stop()


@pytest.fixture
async def refusing_kamailio(tmp_path: Path) -> AsyncIterator[Kamailio]:
    """Kamailio without store-and-forward: an offline phone is a 480."""
    server = await start_kamailio(tmp_path, store_offline=False)
    yield server
    await server.stop()


async def phone_on(kamailio: Kamailio, *, register: bool = True) -> Phone:
    phone = Phone("1001", USERS["1001"], kamailio.port)
    await phone.start(free_port())
    if register:
        assert await phone.register() == 200
    return phone


@pytest.fixture
async def phone(kamailio: Kamailio) -> AsyncIterator[Phone]:
    p = await phone_on(kamailio)
    yield p
    await p.stop()


def target(kamailio: Kamailio, **overrides: Any) -> SipTarget:
    fields: dict[str, Any] = dict(tenant="acme", host="127.0.0.1", port=kamailio.port, domain=DOMAIN,
                                  username="bridge", password=Secret(USERS["bridge"]), transport="auto")
    fields.update(overrides)
    return SipTarget(**fields)


def delivery(body: str, **overrides: Any) -> InboundDelivery:
    fields: dict[str, Any] = dict(tenant="acme", config_id="main", mdr_id="mdr2-abc", from_="+12065550199",
                                  to="+12065550100", extension="1001", body=body, received_at=datetime.now(UTC))
    fields.update(overrides)
    return InboundDelivery(**fields)


async def deliver(sip_target: SipTarget, body: str, **overrides: Any) -> str:
    adapter = SipAdapter(sip_target)
    try:
        return await adapter.deliver(delivery(body, **overrides))
    finally:
        await adapter.close()


async def test_a_registered_phone_gets_the_text_with_a_200(kamailio: Kamailio, phone: Phone) -> None:
    assert await deliver(target(kamailio), "Hello desk phone") == "delivered"
    (got,) = phone.received
    assert got.body == b"Hello desk phone"
    assert got.headers["content-type"].lower().replace(" ", "") == "text/plain;charset=utf-8"
    assert "+12065550199" in got.headers["from"]
    assert got.headers["x-smsbridge-id"] == "mdr2-abc:1001:1/1"
    assert "contact" not in got.headers


async def test_emoji_and_cyrillic_arrive_byte_identical(kamailio: Kamailio, phone: Phone) -> None:
    text = "Привет, мир! 👨‍👩‍👧‍👦 🇺🇦 e\u0301 ✓"
    await deliver(target(kamailio, transport="udp"), text)
    assert phone.texts() == [text.encode("utf-8")]


async def test_a_2500_byte_text_goes_whole_over_tcp(kamailio: Kamailio, phone: Phone) -> None:
    text = ("Длинный текст 👋 " * 200)[:1300]
    assert len(text.encode()) > 2400
    await deliver(target(kamailio, body_budget_bytes=60000), text)
    (got,) = phone.received
    assert got.body == text.encode("utf-8")
    assert got.proto == "tcp"  # Kamailio's udp_mtu sends the big request on by TCP as well


async def test_asterisk_sized_parts_arrive_in_order_and_cut_between_graphemes(kamailio: Kamailio,
                                                                            phone: Phone) -> None:
    text = "".join(f"{i:03d} Привет 👨‍👩‍👧 " for i in range(120))
    await deliver(target(kamailio, body_budget_bytes=1000), text)
    bodies = [b.decode("utf-8") for b in phone.texts()]  # a cut inside a character would not decode
    assert len(bodies) >= 4
    assert all(len(b.encode()) <= 1000 for b in bodies)
    assert [re.match(r"\((\d+)/", b).group(1) for b in bodies] == [str(i) for i in range(1, len(bodies) + 1)]
    assert "".join(re.sub(r"^\(\d+/\d+\) ", "", b) for b in bodies) == text
    ids = [r.headers["x-smsbridge-id"] for r in phone.received]
    assert ids == [f"mdr2-abc:1001:{i}/{len(bodies)}" for i in range(1, len(bodies) + 1)]


async def test_mms_pictures_become_links(kamailio: Kamailio, phone: Phone) -> None:
    media = (Media(url="https://media.example/a.jpg?sig=1", mime_type="image/jpeg"),)
    await deliver(target(kamailio), "Look", is_mms=True, media=media)
    assert phone.texts() == [b"Look\n[image/jpeg] https://media.example/a.jpg?sig=1"]


async def test_the_digest_challenge_is_answered(kamailio: Kamailio, phone: Phone) -> None:
    hop = NextHop("127.0.0.1", kamailio.port)
    sender = MessageSender(hop, transport="udp", timeout_s=10, credentials=Credentials("bridge", USERS["bridge"]))
    try:
        result = await sender.send(Outgoing(to_user="1001", from_user="+12065550199", domain=DOMAIN,
                                            body="challenged first", message_id="m:1001:1/1"))
    finally:
        await hop.close()
    assert (result.answer.status, result.challenged) == (200, True)
    assert phone.texts() == [b"challenged first"]


def sender_to(kamailio: Kamailio, password: str = USERS["bridge"]) -> tuple[NextHop, MessageSender]:
    hop = NextHop("127.0.0.1", kamailio.port)
    return hop, MessageSender(hop, transport="udp", timeout_s=10, credentials=Credentials("bridge", password))


OUT = Outgoing(to_user="1001", from_user="+12065550199", domain=DOMAIN, body="again", message_id="m:1001:1/1")


async def test_the_last_nonce_is_reused_and_a_refused_one_answered_again(kamailio: Kamailio, phone: Phone) -> None:
    hop, sender = sender_to(kamailio)
    try:
        first = await sender.send(OUT)
        second = await sender.send(OUT)  # credentials sent at once: no challenge this time
        sender._nonce = uac._Nonce("Proxy-Authorization", digest.Challenge(DOMAIN, "not-one-of-kamailios"))
        third = await sender.send(OUT)  # refused, the new challenge answered
        fourth = await sender.send(OUT)  # with the new nonce
    finally:
        await hop.close()
    assert [r.challenged for r in (first, second, third, fourth)] == [True, False, True, False]
    assert [r.answer.status for r in (first, second, third, fourth)] == [200] * 4
    assert len(phone.received) == 4


async def test_a_reused_nonce_counts_up_so_a_counting_proxy_sees_no_replay(tmp_path: Path) -> None:
    """Kamailio with qop=auth and nonce_count refuses a nonce count it has seen: texts after the
    first go through with no new challenge only if each carries nc one higher."""
    kamailio = await start_kamailio(tmp_path, nonce_count=True)
    phone = await phone_on(kamailio)
    hop, sender = sender_to(kamailio)
    try:
        results = [await sender.send(OUT) for _ in range(4)]
        concurrent = await asyncio.gather(*(sender.send(OUT) for _ in range(4)))
    finally:
        await hop.close()
        await phone.stop()
        await kamailio.stop()
    assert [r.challenged for r in results] == [True, False, False, False]
    assert all(r.answer.status == 200 for r in [*results, *concurrent])
    assert len(phone.received) == 8


async def test_a_nonce_counted_out_is_not_reused(kamailio: Kamailio, phone: Phone) -> None:
    hop, sender = sender_to(kamailio)
    try:
        await sender.send(OUT)
        assert sender._nonce is not None
        sender._nonce.uses = uac.MAX_NONCE_COUNT  # nc would need a ninth hex digit
        again = await sender.send(OUT)
    finally:
        await hop.close()
    assert (again.answer.status, again.challenged) == (200, True)


async def test_credentials_refused_twice_drop_the_nonce(kamailio: Kamailio, phone: Phone) -> None:
    hop, sender = sender_to(kamailio, password="wrong")
    try:
        refused = await sender.send(OUT)
    finally:
        await hop.close()
    assert (refused.answer.status, refused.challenged, sender._nonce) == (407, True, None)
    assert phone.received == []


async def test_a_wrong_password_is_a_permanent_auth_failure(kamailio: Kamailio, phone: Phone) -> None:
    with pytest.raises(PermanentError) as failure:
        await deliver(target(kamailio, password=Secret("wrong")), "never")
    assert failure.value.code == "sip_auth_failed"
    assert phone.received == []


async def test_no_credentials_is_a_permanent_auth_failure(kamailio: Kamailio, phone: Phone) -> None:
    with pytest.raises(PermanentError) as failure:
        await deliver(target(kamailio, username="", password=None), "never")
    assert failure.value.code == "sip_auth_failed"


async def test_a_relay_that_stores_answers_202_and_delivers_on_register(kamailio: Kamailio) -> None:
    phone = await phone_on(kamailio, register=False)
    try:
        assert await deliver(target(kamailio), "stored for later") == "accepted"
        assert phone.received == []
        assert await phone.register() == 200
        await eventually(lambda: phone.texts() == [b"stored for later"], what="msilo's stored text")
    finally:
        await phone.stop()


async def test_an_offline_phone_is_retried_and_gets_the_text_once_registered(refusing_kamailio: Kamailio) -> None:
    phone = await phone_on(refusing_kamailio, register=False)
    try:
        with pytest.raises(RetryableError, match="480"):
            await deliver(target(refusing_kamailio), "when you are back")
        assert await phone.register() == 200
        assert await deliver(target(refusing_kamailio), "when you are back") == "delivered"
        assert phone.texts() == [b"when you are back"]
    finally:
        await phone.stop()


async def test_a_refusal_by_the_phone_is_permanent_with_the_sip_status(kamailio: Kamailio, phone: Phone) -> None:
    phone.status = 488
    with pytest.raises(PermanentError) as failure:
        await deliver(target(kamailio), "not acceptable here")
    assert failure.value.code == "sip_488"


async def test_too_large_is_split_smaller_then_permanent(kamailio: Kamailio, phone: Phone) -> None:
    phone.status = 413
    with pytest.raises(PermanentError) as failure:
        await deliver(target(kamailio, body_budget_bytes=200), "x" * 300)
    assert failure.value.code == "sip_too_large"
    sizes = [len(b) for b in phone.texts()]
    assert sizes[0] <= 200 and sizes[-1] <= 100  # first at the budget, then again at half of it


async def test_an_unreachable_next_hop_is_retryable() -> None:
    unused = SipTarget(tenant="acme", host="127.0.0.1", port=free_port(), domain=DOMAIN, transport="tcp")
    with pytest.raises(RetryableError):
        await deliver(unused, "nobody there")
