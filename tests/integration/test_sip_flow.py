"""Webhook → bridge → SIP MESSAGE through a real Kamailio → a registered test phone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from smsbridge.config import (
    AdminSettings,
    EmailTarget,
    InboundRule,
    OutboundRule,
    RetryPolicy,
    Settings,
    SipIntakeSettings,
    SipPeer,
    SipTarget,
)
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Claim, DeliveryKey, Ledger
from smsbridge.secret import Secret
from smsbridge.sip.message import uri_user
from tests.conftest import StartBridge
from tests.integration.test_sip_delivery import USERS, phone_on
from tests.support.fixtures import raw_payload
from tests.support.kamailio import DOMAIN, Kamailio
from tests.support.ledger import BACKENDS, open_ledger
from tests.support.ports import free_port
from tests.support.settings import TOKEN, settings, with_flowroute
from tests.support.smtp import PASSWORD as SMTP_PASSWORD
from tests.support.smtp import USER as SMTP_USER
from tests.support.smtp import MailServer, smtp

__all__ = ["smtp"]  # the fixture
from tests.support.wait import eventually


@pytest.fixture
async def refusing_kamailio(tmp_path: Path) -> AsyncIterator[Kamailio]:
    server = Kamailio(tmp_path / "kamailio", free_port(), USERS, store_offline=False)
    await server.start()
    yield server
    await server.stop()


ADMIN = "admin-token-for-sip-tests-0123456789"


def sip_settings(prefix: str, kamailio: Kamailio) -> Settings:
    base = settings(prefix=prefix, rules=[InboundRule(config="main", extensions=["1001"])])
    target = SipTarget(tenant="acme", host="127.0.0.1", port=kamailio.port, domain=DOMAIN, username="bridge",
                       password=Secret(USERS["bridge"]), timeout_s=5.0)
    return msgspec.structs.replace(base, pbx_targets=[target])


async def post_sms(http: aiohttp.ClientSession, receiver_url: str | None) -> int:
    url = f"{receiver_url}/webhooks/flowroute/main/{TOKEN}"
    async with http.post(url, data=raw_payload("sms_jsonapi_2024"),
                         headers={"Content-Type": "application/json"}) as response:
        return response.status


async def test_an_offline_phone_gets_the_text_when_it_registers(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, refusing_kamailio: Kamailio
) -> None:
    phone = await phone_on(refusing_kamailio, register=False)
    try:
        bridge = await start_bridge(sip_settings(prefix, refusing_kamailio))
        assert await post_sms(http, bridge.receiver_url) == 200
        registry = bridge.metrics.registry
        retries = lambda: registry.get_sample_value("smsbridge_retries_total", {"stage": "delivery"}) or 0  # noqa: E731
        await eventually(lambda: retries() >= 1, what="a retry after Kamailio's 480")
        assert phone.received == []
        assert await phone.register() == 200  # the delivery stage retries until the phone is back
        await eventually(lambda: phone.texts() == [b"Greetings on Friday evening!"], timeout=60,
                         what="the text on the phone")
        (got,) = phone.received
        assert got.headers["x-smsbridge-id"] == "mdr2-4e5435f325d9431f9e64118b20895b08:1001:1/1"
    finally:
        await phone.stop()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_relay_202_is_recorded_as_accepted_and_not_repeated(backend: str, tmp_path: Path) -> None:
    async with open_ledger(backend, tmp_path) as ledger:
        assert await claim(ledger) is Claim.NEW
        await ledger.delivered(DeliveryKey("main", "mdr2-y", "1001"), "accepted")
        assert await claim(ledger) is Claim.DONE


async def claim(ledger: Ledger) -> Claim:
    return await ledger.claim_delivery(DeliveryKey("main", "mdr2-y", "1001"), lease_s=30)


async def test_a_text_reaches_the_phone_and_its_reply_reaches_flowroute(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, tmp_path: Path,
    flowroute: FlowrouteSimulator,
) -> None:
    intake_port = free_port()
    kamailio = Kamailio(tmp_path / "kamailio", free_port(), USERS, intake_port=intake_port)
    await kamailio.start()
    phone = await phone_on(kamailio)
    try:
        base = with_flowroute(settings(prefix=prefix, rules=[InboundRule(config="main", extensions=["1001"])]),
                              flowroute.url, rules=[OutboundRule(config="main", extensions=["1001"])])
        target = SipTarget(tenant="acme", host="127.0.0.1", port=kamailio.port, domain=DOMAIN, username="bridge",
                           password=Secret(USERS["bridge"]), from_format="did+sender")
        bridge = await start_bridge(msgspec.structs.replace(
            base, pbx_targets=[target],
            sip_intake=SipIntakeSettings(port=intake_port, peers=[SipPeer(tenant="acme", address="127.0.0.1")])))
        assert await post_sms(http, bridge.receiver_url) == 200
        await eventually(lambda: phone.texts() == [b"Greetings on Friday evening!"], what="the text on the phone")
        reply_to = uri_user(phone.received[0].headers["from"])
        assert reply_to == "+12065550100+12065550199"  # DID + sender, as FreePBX writes it
        assert await phone.send(reply_to, "On my way 🚗") == 202  # the bridge's answer, relayed by Kamailio
        await eventually(lambda: len(flowroute.requests) == 1, what="the reply at Flowroute")
        sent = flowroute.requests[0]["body"]["data"]["attributes"]
        # Flowroute is sent 11 digits, no "+" (issue 18)
        assert (sent["from"], sent["to"], sent["body"]) == ("12065550100", "12065550199", "On my way 🚗")
    finally:
        await phone.stop()
        await kamailio.stop()


def with_email(base: Settings, kamailio: Kamailio, smtp: MailServer, mode: str, *, max_age_s: float) -> Settings:
    sip = SipTarget(tenant="acme", host="127.0.0.1", port=kamailio.port, domain=DOMAIN, username="bridge",
                    password=Secret(USERS["bridge"]), timeout_s=5.0)
    mail = EmailTarget(tenant="acme", mode=mode, host="127.0.0.1", port=smtp.port,  # type: ignore[arg-type]
                       ca_file=str(smtp.cert), username=SMTP_USER, password=Secret(SMTP_PASSWORD),
                       sender="texts@bridge.test", recipients={"1001": "alice@example.test"}, timeout_s=10)
    quick = RetryPolicy(max_attempts=50, base_delay_s=0.2, max_delay_s=0.5, max_age_s=max_age_s)
    return msgspec.structs.replace(base, pbx_targets=[sip, mail],
                                   retry=msgspec.structs.replace(base.retry, delivery=quick))


async def test_past_the_maximum_age_an_offline_phones_text_goes_by_email(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, refusing_kamailio: Kamailio,
    smtp: MailServer,
) -> None:
    phone = await phone_on(refusing_kamailio, register=False)
    try:
        base = settings(prefix=prefix, rules=[InboundRule(config="main", extensions=["1001"])])
        bridge = await start_bridge(with_email(base, refusing_kamailio, smtp, "fallback", max_age_s=2.0))
        assert await post_sms(http, bridge.receiver_url) == 200
        await eventually(lambda: len(smtp.handler.mails) == 1, timeout=60, what="the fallback mail")
        mail = smtp.handler.mails[0]
        assert mail["Subject"] == "Text from +12065550199 to +12065550100 (ext. 1001)"
        assert phone.received == []
    finally:
        await phone.stop()


@pytest.fixture
async def storing_kamailio(tmp_path: Path) -> AsyncIterator[Kamailio]:
    server = Kamailio(tmp_path / "kamailio", free_port(), USERS)
    await server.start()
    yield server
    await server.stop()


async def test_an_always_copy_is_mailed_beside_the_sip_delivery(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, storing_kamailio: Kamailio,
    smtp: MailServer,
) -> None:
    kamailio = storing_kamailio
    phone = await phone_on(kamailio)
    try:
        base = settings(prefix=prefix, rules=[InboundRule(config="main", extensions=["1001"])])
        bridge = await start_bridge(with_email(base, kamailio, smtp, "always", max_age_s=60))
        assert await post_sms(http, bridge.receiver_url) == 200
        await eventually(lambda: len(smtp.handler.mails) == 1 and len(phone.received) == 1, what="phone and mail")
        assert phone.texts() == [b"Greetings on Friday evening!"]
    finally:
        await phone.stop()


async def test_a_relays_202_shows_as_accepted_in_the_history(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, storing_kamailio: Kamailio,
) -> None:
    phone = await phone_on(storing_kamailio, register=False)  # offline: Kamailio stores the text, 202
    try:
        base = sip_settings(prefix, storing_kamailio)
        bridge = await start_bridge(msgspec.structs.replace(base, admin=AdminSettings(token=Secret(ADMIN))))
        assert await post_sms(http, bridge.receiver_url) == 200
        body: dict[str, object] = {}

        async def shown() -> bool:
            nonlocal body
            async with http.get(f"{bridge.receiver_url}/v1/messages/mdr2-4e5435f325d9431f9e64118b20895b08",
                                headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                body = await response.json() if response.status == 200 else {}
            return bool(body.get("deliveries"))

        await eventually(shown, what="the delivery in the history")
        assert [(d["extension"], d["state"]) for d in body["deliveries"]] == [("1001", "accepted")]  # type: ignore[attr-defined]
        assert phone.received == []
    finally:
        await phone.stop()
