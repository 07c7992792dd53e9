"""One Flowroute id in two SMS configurations (two tenants, possibly two Flowroute accounts) is two
texts: a hostile or buggy sender, or a replay, posting another configuration's id must neither
be dropped as that configuration's resend nor collide with its delivery claim. Both ledger
backends, the real broker, the real receiver, a fake PBX per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from smsbridge.bridge import Bridge
from smsbridge.config import AdminSettings, HttpTarget, InboundRule, LedgerSettings, Settings
from smsbridge.sandbox.pbx import FakePbx
from smsbridge.secret import Secret
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.fixtures import payload
from tests.support.settings import DID_MAIN, settings, sms_config
from tests.support.wait import eventually

BETA_TOKEN = "beta-token-abcdefghijklmnopqrstuvwxyz"
BETA_DID = "+13125550100"
ADMIN = "admin-token-for-tests-0123456789"
MDR = "mdr2-4e5435f325d9431f9e64118b20895b08"  # the fixture's id, posted to both configurations


@pytest.fixture
async def beta_pbx() -> AsyncIterator[FakePbx]:
    fake = FakePbx()
    await fake.start()
    yield fake
    await fake.stop()


def two_configurations(prefix: str, ledger: LedgerSettings, acme_url: str, beta_url: str) -> Settings:
    """acme (configuration `main`) and beta (`beta-main`), each routing its DID to extension 101."""
    base = settings(prefix=prefix, pbx_url=acme_url, ledger=ledger,
                    rules=[InboundRule(config="main", did=DID_MAIN, extensions=["101"])])
    beta = sms_config(id="beta-main", tenant="beta", access_key=Secret("AK-beta"), secret_key=Secret("SK-beta"),
                      webhook_token=Secret(BETA_TOKEN), dids=[BETA_DID])
    return msgspec.structs.replace(
        base, sms_configs=[*base.sms_configs, beta], admin=AdminSettings(token=Secret(ADMIN)),
        inbound_rules=[*base.inbound_rules, InboundRule(config="beta-main", did=BETA_DID, extensions=["101"])],
        pbx_targets=[*base.pbx_targets, HttpTarget(tenant="beta", url=beta_url, auth_value=Secret("Bearer beta"),
                                                   timeout_s=2.0)])


def text(to: str, body: str) -> bytes:
    doc = payload("sms_jsonapi_2024")
    doc["data"]["attributes"].update(to=to.removeprefix("+"), body=body)
    assert doc["data"]["id"] == MDR
    return msgspec.json.encode(doc)


def inbound_done(bridge: Bridge) -> float:
    """Inbound messages (texts, resends) the inbound stage finished with."""
    value = bridge.metrics.registry.get_sample_value("smsbridge_messages_total",
                                                     {"stage": "inbound", "outcome": "done"})
    return value or 0.0


async def message(http: aiohttp.ClientSession, bridge: Bridge, tenant: str) -> dict[str, Any]:
    url = f"{bridge.receiver_url}/v1/messages/{MDR}?tenant={tenant}"
    async with http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        assert response.status == 200, await response.text()
        found: dict[str, Any] = await response.json()
        return found


async def test_one_flowroute_id_posted_to_two_configurations_reaches_each_tenants_pbx_once(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, pbx: FakePbx, beta_pbx: FakePbx,
    http: aiohttp.ClientSession, prefix: str,
) -> None:
    bridge = await start_bridge(two_configurations(prefix, ledger_settings, pbx.url, beta_pbx.url))
    acme_hook = hook_url(bridge.receiver_url)
    beta_hook = hook_url(bridge.receiver_url, config="beta-main", token=BETA_TOKEN)
    acme_text, beta_text = text(DID_MAIN, "for acme"), text(BETA_DID, "for beta")
    assert (await post(http, acme_hook, acme_text))[0] == 200
    await pbx.wait_for(1, timeout=30)
    assert (await post(http, beta_hook, beta_text))[0] == 200  # the same id, another configuration
    await beta_pbx.wait_for(1, timeout=30)
    await eventually(lambda: inbound_done(bridge) == 2, what="both texts recorded by the inbound stage")
    # Each configuration's resend is still its own resend: dropped by the inbound stage, so once
    # it has finished with both nothing more can reach either PBX.
    for hook, body in ((acme_hook, acme_text), (beta_hook, beta_text)):
        assert (await post(http, hook, body))[0] == 200
    await eventually(lambda: inbound_done(bridge) == 4, what="both resends handled")
    assert [(d["tenant"], d["config_id"], d["to"], d["body"]) for d in pbx.received] == [
        ("acme", "main", DID_MAIN, "for acme")]
    assert [(d["tenant"], d["config_id"], d["to"], d["body"]) for d in beta_pbx.received] == [
        ("beta", "beta-main", BETA_DID, "for beta")]
    assert len(pbx.attempts) == len(beta_pbx.attempts) == 1
    for tenant, config in (("acme", "main"), ("beta", "beta-main")):  # each its own row, history, claim
        found = await message(http, bridge, tenant)
        assert (found["message"]["config_id"], found["message"]["state"]) == (config, "delivered")
        assert [(d["extension"], d["state"]) for d in found["deliveries"]] == [("101", "delivered")]
