"""The SIP intake under two tenants and hostile phones, through SIPp and a running bridge: a
phone's MESSAGE is held to the same tenant, outbound and number rules as a request published on
AMQP or sent through the relay API (issues 16, 17, 18), and a refusal is the phone's answer at
once, before anything reaches Flowroute."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from smsbridge.config import OutboundRule, Settings, SipIntakeSettings, SipPeer
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.secret import Secret
from tests.conftest import StartBridge
from tests.support.ports import free_port
from tests.support.settings import DID_MAIN, settings, sms_config, with_flowroute
from tests.support.sipp import expecting, run_sipp
from tests.support.wait import eventually

GLOBEX_DID = "+13125550100"
MOBILE = "+12065550199"
ACME_PBX, GLOBEX_PBX, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3"


@pytest.fixture
async def flowroute_two() -> AsyncIterator[FlowrouteSimulator]:
    simulator = FlowrouteSimulator({"AK-test": "SK-test", "AK-globex": "SK-globex"}, dlr_delay_s=0.05)
    await simulator.start()
    yield simulator
    await simulator.stop()


def two_tenants(prefix: str, flowroute_url: str) -> Settings:
    base = settings(prefix=prefix)
    globex = sms_config(id="gx", tenant="globex", access_key=Secret("AK-globex"), secret_key=Secret("SK-globex"),
                        webhook_token=Secret("globex-token-abcdefghijklmnopqrstuvwxyz"), dids=[GLOBEX_DID],
                        account="globex")
    base = msgspec.structs.replace(base, sms_configs=[*base.sms_configs, globex])
    rules = [OutboundRule(config="main", extensions=["101"], dids=[DID_MAIN], default_did=DID_MAIN),
             OutboundRule(config="gx", extensions=["201"], dids=[GLOBEX_DID])]
    peers = [SipPeer(tenant="acme", address=ACME_PBX), SipPeer(tenant="globex", address=GLOBEX_PBX)]
    return msgspec.structs.replace(with_flowroute(base, flowroute_url, rules=rules),
                                   sip_intake=SipIntakeSettings(port=free_port(), peers=peers))


# (who sends, From user, Request-URI user, Content-Type, text, transport) -> the answer it must get
CASES = [
    pytest.param(ACME_PBX, "101", MOBILE, "text/plain;charset=UTF-8", "acme's own ✓", "u1", 202, id="acme"),
    pytest.param(GLOBEX_PBX, "201", f"{GLOBEX_DID}+12065550198", "text/plain", "globex's own", "u1", 202,
                 id="globex-from-its-did"),
    pytest.param(ACME_PBX, "101", f"{GLOBEX_DID}+12065550197", "text/plain", "from their DID", "u1", 403,
                 id="acme-sends-from-globex-did"),
    pytest.param(GLOBEX_PBX, "101", MOBILE, "text/plain", "as acme's 101", "u1", 404,
                 id="globex-spoofs-acme-extension"),
    pytest.param(STRANGER, "101", MOBILE, "text/plain", "who am I", "u1", 403, id="unknown-peer"),
    pytest.param(ACME_PBX, "101", "+18765550123", "text/plain", "to Jamaica", "u1", 403, id="outside-us-ca"),
    pytest.param(ACME_PBX, "101", "12", "text/plain", "short number", "u1", 484, id="not-a-number"),
    pytest.param(ACME_PBX, "101", MOBILE, "text/html", "<b>hi</b>", "u1", 415, id="bad-content-type"),
    pytest.param(ACME_PBX, "101", MOBILE, "text/plain;charset=ISO-8859-1", "latin", "u1", 415, id="bad-charset"),
    pytest.param(ACME_PBX, "101", MOBILE, "text/plain", "x" * 12_000, "t1", 513, id="huge-body-over-tcp"),
]


async def test_each_phone_is_held_to_its_tenant_and_the_rules(
    start_bridge: StartBridge, flowroute_two: FlowrouteSimulator, prefix: str, tmp_path: Path
) -> None:
    bridge = await start_bridge(two_tenants(prefix, flowroute_two.url))
    assert bridge.sip_intake is not None
    for case in CASES:
        peer, from_user, service, content_type, text, transport, expected = case.values
        keys = {"tag": uuid.uuid4().hex, "from_user": str(from_user), "content_type": str(content_type),
                "text": str(text)}
        code, output = await run_sipp(expecting(int(expected), tmp_path), bridge.sip_intake.port, local_ip=str(peer),
                                      service=str(service), keys=keys, workdir=tmp_path, transport=str(transport),
                                      call_id=f"{uuid.uuid4().hex}@phone")
        assert code == 0, f"{case.id}: expected {expected}: {output}"
    # Only the two texts that were answered 202 reach Flowroute, each from its own tenant's DID
    # and account; nothing refused costs an attempt.
    await eventually(lambda: len(flowroute_two.requests) >= 2, what="the two accepted texts at Flowroute")
    sent = sorted((r["body"]["data"]["attributes"]["from"], r["body"]["data"]["attributes"]["to"],
                   r["body"]["data"]["attributes"]["body"]) for r in flowroute_two.requests)
    assert sent == [("12065550100", "12065550199", "acme's own ✓"), ("13125550100", "12065550198", "globex's own")]
    assert {r["user"] for r in flowroute_two.requests} == {"AK-test", "AK-globex"}
