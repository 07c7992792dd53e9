"""Settings for relay tests: tenant acme (its PBX speaks only Flowroute) and tenant globex."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from aio_pika.abc import AbstractRobustConnection

from smsbridge.broker import names
from smsbridge.config import FlowrouteTarget, HttpTarget, OutboundRule, RelayClient, RelaySettings, Settings
from smsbridge.sandbox.flowroute_pbx import FlowroutePbx
from smsbridge.secret import Secret
from smsbridge.workers.relay_dlr import STAGE
from tests.support.settings import ACCOUNT, DID_MAIN, TOKEN, settings, sms_config, with_flowroute

GLOBEX_DID = "+14255550100"
FUSION = ("acme-fusion", "fusion-secret-0123456789abcdef")
FREEPBX = ("acme-freepbx", "freepbx-secret-0123456789abcdef")
GLOBEX = ("globex-pbx", "globex-secret-0123456789abcdef")
LOOPBACK = ["127.0.0.0/8"]
RELAY_ID_KEY = "relay-id-key-for-tests-0123456789abcdef"


def client(credentials: tuple[str, str], tenant: str, extension: str, callbacks: list[str] | None = None
           ) -> RelayClient:
    return RelayClient(tenant=tenant, access_key=credentials[0], secret_key=Secret(credentials[1]),
                       extension=extension, dlr_callback_networks=callbacks or [])


def relay_settings(prefix: str, *, api_base: str = "http://127.0.0.1:9", pbx_hook: str = "http://127.0.0.1:9/hook",
                   forward_dlrs: bool = False, signed_ids: bool = True) -> Settings:
    """`signed_ids`: `[relay] id_key` set (sends without a key recorded by the outbound stage);
    False: unset, the receiver records them."""
    rules = [OutboundRule(config="main", extensions=["fusion", "freepbx"], dids=[DID_MAIN]),
             OutboundRule(config="gx", extensions=["relay"])]
    base = with_flowroute(settings(prefix=prefix), api_base, rules=rules)
    globex = sms_config(id="gx", tenant="globex", dids=[GLOBEX_DID], webhook_token=Secret(TOKEN + "-gx"),
                        account=ACCOUNT)
    return msgspec.structs.replace(
        base, sms_configs=[*base.sms_configs, globex],
        relay=RelaySettings(id_key=Secret(RELAY_ID_KEY) if signed_ids else None),
        pbx_targets=[FlowrouteTarget(tenant="acme", url=pbx_hook, timeout_s=2.0, forward_dlrs=forward_dlrs),
                     HttpTarget(tenant="globex", url="http://127.0.0.1:9/unused")],
        # acme's PBXs take their receipts on loopback, as a PBX beside the bridge would on its LAN;
        # globex's client allows no private network (its callbacks on loopback are refused)
        relay_clients=[client(FUSION, "acme", "fusion", LOOPBACK), client(FREEPBX, "acme", "freepbx", LOOPBACK),
                       client(GLOBEX, "globex", "relay")],
    )


@pytest.fixture
async def relay_queue(amqp: AbstractRobustConnection, prefix: str) -> AsyncIterator[str]:
    """The relay DLR stage queue's name; removed after the test (topology.delete does not know it)."""
    name = names.stage_queue(prefix, STAGE)
    yield name
    channel = await amqp.channel()
    await channel.queue_delete(name)
    await channel.close()


@pytest.fixture
async def flowroute_pbx() -> AsyncIterator[FlowroutePbx]:
    """The sandbox PBX that speaks only Flowroute (its webhook, its DLR callback), on loopback."""
    pbx = FlowroutePbx()
    await pbx.start()
    yield pbx
    await pbx.stop()
