"""SIPp as a phone → the bridge's SIP intake → outbound → dispatcher → Flowroute simulator."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from smsbridge.config import OutboundRule, Settings, SipIntakeSettings, SipPeer
from smsbridge.flowroute.simulator import FlowrouteSimulator
from tests.conftest import StartBridge
from tests.support.ports import free_port
from tests.support.settings import settings, with_flowroute
from tests.support.sipp import run_sipp
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

MOBILE = "+12065550199"


def intake_settings(base: Settings) -> Settings:
    return msgspec.structs.replace(
        base, outbound_rules=[OutboundRule(config="main", extensions=["101"], default_did="+12065550100")],
        sip_intake=SipIntakeSettings(port=free_port(), peers=[SipPeer(tenant="acme", address="127.0.0.1")]))


async def test_each_transaction_is_sent_once_retransmission_included(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, prefix: str, tmp_path: Path
) -> None:
    bridge = await start_bridge(intake_settings(with_flowroute(settings(prefix=prefix), flowroute.url)))
    assert bridge.sip_intake is not None
    port, first = bridge.sip_intake.port, {"tag": uuid.uuid4().hex, "text": "First text from SIPp ✓"}
    same = {"call_id": f"{uuid.uuid4().hex}@phone", "local_port": free_port()}
    for copy in ("original", "retransmission"):  # the second run repeats the first one's bytes
        code, output = await run_sipp("one_text.xml", port, service=MOBILE, keys=first, workdir=tmp_path, **same)
        assert code == 0, f"{copy}: {output}"
    second = {"tag": uuid.uuid4().hex, "text": "Second text from SIPp"}
    code, output = await run_sipp("one_text.xml", port, service=MOBILE, keys=second, workdir=tmp_path,
                                  call_id=f"{uuid.uuid4().hex}@phone")
    assert code == 0, output
    assert bridge.sip_intake.retransmissions == 1  # the copy was answered from the cache, not published
    await eventually(lambda: len(flowroute.requests) >= 2, what="two sends at Flowroute")
    bodies = sorted(r["body"]["data"]["attributes"]["body"] for r in flowroute.requests)
    assert bodies == ["First text from SIPp ✓", "Second text from SIPp"]
    # Flowroute is sent 11 digits, no "+" (issue 18)
    assert {r["body"]["data"]["attributes"]["to"] for r in flowroute.requests} == {MOBILE.removeprefix("+")}
    assert {r["body"]["data"]["attributes"]["from"] for r in flowroute.requests} == {"12065550100"}


async def test_broker_down_is_503_with_retry_after(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, prefix: str, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    base = intake_settings(with_flowroute(settings(prefix=prefix), flowroute.url))
    bridge = await start_bridge(msgspec.structs.replace(base, broker=msgspec.structs.replace(
        base.broker, urls=[proxy.url], publish_timeout_s=1.0)))
    assert bridge.sip_intake is not None
    await proxy.cut()
    try:
        code, output = await run_sipp("broker_down.xml", bridge.sip_intake.port, service=MOBILE,
                                      keys={"tag": uuid.uuid4().hex}, workdir=tmp_path,
                                      call_id=f"{uuid.uuid4().hex}@phone")
    finally:
        await proxy.restore()
    assert code == 0, output
    assert flowroute.requests == []
