"""Issue 16: tenants kept apart, with the real permissions of deploy/rabbitmq/definitions.json
loaded into a vhost of this module's own (tests/support/vhost.py). The bridge connects as the
file's `smsbridge` user, each PBX as its own user (pbx-acme from the file, pbx-beta its copy).

Every way a PBX user can try to act as another tenant, and every way a webhook token can try to
touch another tenant's data, one test each; all must be refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.config import AmqpTarget, InboundRule, LedgerSettings, OutboundRule, Settings
from smsbridge.events import OutboundRequest, StatusEvent, encoder
from smsbridge.flowroute.payloads import dlr_payload
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Scope
from smsbridge.secret import Secret
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.fixtures import payload
from tests.support.settings import DID_MAIN, TOKEN, settings, sms_config, with_flowroute
from tests.support.vhost import Vhost, isolated_vhost
from tests.support.wait import eventually

PREFIX = "smsbridge"  # the prefix the permissions file is written for (the vhost is ours alone)
BETA_TOKEN = "beta-token-abcdefghijklmnopqrstuvwxyz"
BETA_DID = "+13125550100"
MOBILE = "+12065550199"
REFUSED = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelPreconditionFailed,
           aio_pika.exceptions.ChannelClosed)
_status = msgspec.json.Decoder(StatusEvent)


@pytest.fixture(scope="module")
def vhost(amqp_url: str) -> Iterator[Vhost]:
    with isolated_vhost(amqp_url) as made:
        yield made


def two_tenants(vhost: Vhost, flowroute_url: str, ledger: Path) -> Settings:
    base = settings(prefix=PREFIX, amqp_exchange=f"{PREFIX}.pbx",
                    ledger=LedgerSettings(url=f"sqlite:///{ledger}"))
    beta = sms_config(id="beta-main", tenant="beta", access_key=Secret("AK-beta"), secret_key=Secret("SK-beta"),
                      webhook_token=Secret(BETA_TOKEN), dids=[BETA_DID], account="beta")
    base = msgspec.structs.replace(
        base, sms_configs=[*base.sms_configs, beta],
        inbound_rules=[InboundRule(config="main", did=DID_MAIN, extensions=["101"]),
                       InboundRule(config="beta-main", did=BETA_DID, extensions=["101"])],
        pbx_targets=[AmqpTarget(tenant="acme", exchange=f"{PREFIX}.pbx"),
                     AmqpTarget(tenant="beta", exchange=f"{PREFIX}.pbx")],
        broker=msgspec.structs.replace(base.broker, urls=[vhost.url("smsbridge")]))
    rules = [OutboundRule(config="main", extensions=["101"], dids=[DID_MAIN]),
             OutboundRule(config="beta-main", extensions=["101"], dids=[BETA_DID])]
    return with_flowroute(base, flowroute_url, rules=rules)


class Observer:
    """As the bridge's user: every status and every PBX delivery of the vhost, and the dead letters."""

    def __init__(self, channel: AbstractChannel, statuses: AbstractQueue, texts: AbstractQueue) -> None:
        self.channel = channel
        self._statuses = statuses
        self._texts = texts
        self.seen: list[tuple[str, StatusEvent]] = []

    async def statuses(self, until: Any, timeout: float = 20.0) -> list[tuple[str, StatusEvent]]:
        """Collect (routing key, status) until `until(collected)` holds, or fail at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(self.seen):
            assert loop.time() < deadline, f"statuses seen: {self.seen}"
            message = await self._statuses.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                self.seen.append((message.routing_key or "", _status.decode(message.body)))
        return self.seen

    async def drain(self) -> list[tuple[str, StatusEvent]]:
        """Every status published so far (call once what was awaited is known to be published)."""
        while (message := await self._statuses.get(fail=False, no_ack=True)) is not None:
            self.seen.append((message.routing_key or "", _status.decode(message.body)))
        return self.seen

    async def texts(self) -> list[str]:
        keys = []
        while (message := await self._texts.get(fail=False, no_ack=True)) is not None:
            keys.append(message.routing_key or "")
        return keys

    async def dead(self, code: str, timeout: float = 20.0) -> aio_pika.abc.AbstractIncomingMessage:
        queue = await self.channel.get_queue(names.dead_queue(PREFIX), ensure=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
            elif (message.headers or {}).get(names.H_REASON_CODE) in (code, code.encode()):
                return message
        raise AssertionError(f"no dead letter with code {code}")


@pytest.fixture
async def flowroute() -> AsyncIterator[FlowrouteSimulator]:
    simulator = FlowrouteSimulator({"AK-test": "SK-test", "AK-beta": "SK-beta"}, dlr_delay_s=0.05)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def bridge(vhost: Vhost, flowroute: FlowrouteSimulator, tmp_path: Path) -> AsyncIterator[Bridge]:
    started = Bridge(two_tenants(vhost, flowroute.url, tmp_path / "ledger.sqlite3"))
    await started.start(connect_attempts=3)
    yield started
    await started.stop()


@pytest.fixture
async def observer(vhost: Vhost, bridge: Bridge) -> AsyncIterator[Observer]:
    connection = await aio_pika.connect_robust(vhost.url("smsbridge"))
    channel = await connection.channel()
    await (await channel.get_queue(names.dead_queue(PREFIX), ensure=False)).purge()  # an earlier test's
    tag = uuid.uuid4().hex[:8]
    statuses = await channel.declare_queue(f"{PREFIX}.test-status-{tag}", exclusive=True)
    await statuses.bind(names.status_exchange(PREFIX), routing_key="status.#")
    texts = await channel.declare_queue(f"{PREFIX}.test-texts-{tag}", exclusive=True)
    await texts.bind(f"{PREFIX}.pbx", routing_key="#")
    yield Observer(channel, statuses, texts)
    await connection.close()


async def as_pbx(vhost: Vhost, tenant: str) -> AbstractRobustConnection:
    return await aio_pika.connect_robust(vhost.url(f"pbx-{tenant}"))


def request(tenant: str = "acme", cmid: str | None = None, **fields: Any) -> OutboundRequest:
    base: dict[str, Any] = dict(tenant=tenant, client_message_id=cmid or f"iso-{uuid.uuid4().hex[:8]}",
                                from_extension="101", to=MOBILE, body="hello")
    base.update(fields)
    return OutboundRequest(**base)


async def publish(connection: AbstractRobustConnection, exchange: str, key: str, body: bytes,
                  **properties: Any) -> None:
    """Publish with a confirm on a fresh channel (a refusal closes the channel it happened on)."""
    channel = await connection.channel()
    try:
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
                             routing_key=key, timeout=10)
    finally:
        if not channel.is_closed:
            await channel.close()


# ----- a PBX user trying to act as another tenant ---------------------------------------------------
async def test_a_pbx_cannot_publish_with_another_tenants_key(vhost: Vhost, bridge: Bridge,
                                                              flowroute: FlowrouteSimulator) -> None:
    async with await as_pbx(vhost, "acme") as pbx:
        with pytest.raises(REFUSED):
            await publish(pbx, names.requests_exchange(PREFIX), "outbound.beta", encoder.encode(request("beta")))
    assert flowroute.requests == []


@pytest.mark.parametrize("origin_header", [None, "outbound.beta", "anything", f"{PREFIX}.outbound"])
async def test_a_pbx_cannot_name_another_tenant_in_the_body_whatever_header_it_sets(
    vhost: Vhost, bridge: Bridge, observer: Observer, flowroute: FlowrouteSimulator, origin_header: str | None,
) -> None:
    """The issue's exploit: key outbound.acme (allowed), body tenant beta, origin header forged."""
    headers = {names.H_ORIGIN_KEY: origin_header} if origin_header else {}
    async with await as_pbx(vhost, "acme") as pbx:
        await publish(pbx, names.requests_exchange(PREFIX), "outbound.acme",
                      encoder.encode(request("beta", from_did=BETA_DID)), headers=headers)
    dead = await observer.dead("tenant_mismatch")
    assert (dead.headers or {}).get(names.H_ORIGIN_KEY) in ("outbound.acme", b"outbound.acme")
    assert flowroute.requests == []
    assert not [s for key, s in observer.seen if key.startswith("status.beta.")]


@pytest.mark.parametrize("exchange", [f"{PREFIX}.work", f"{PREFIX}.delay", f"{PREFIX}.dlx", f"{PREFIX}.status",
                                      f"{PREFIX}.pbx", ""])
async def test_a_pbx_cannot_publish_into_the_bridges_own_exchanges(vhost: Vhost, bridge: Bridge,
                                                                    exchange: str) -> None:
    """Retries and dead letters come only from the bridge: a PBX cannot forge one (nor a status or
    another tenant's text), so the origin header on them can be trusted."""
    body = encoder.encode(request("beta"))
    headers = {names.H_ORIGIN_KEY: "outbound.beta", names.H_DELAY_TIER: "0"}
    async with await as_pbx(vhost, "acme") as pbx:
        with pytest.raises(REFUSED):
            await publish(pbx, exchange, names.stage_queue(PREFIX, "outbound"), body, headers=headers)


async def test_a_pbx_cannot_claim_the_bridges_user_id(vhost: Vhost, bridge: Bridge) -> None:
    async with await as_pbx(vhost, "acme") as pbx:
        with pytest.raises(REFUSED):
            await publish(pbx, names.requests_exchange(PREFIX), "outbound.acme", encoder.encode(request()),
                          user_id=vhost.users["smsbridge"])


@pytest.mark.parametrize(("fields", "code"), [
    ({"config_id": "beta-main"}, "unknown_config"),
    ({"from_did": BETA_DID}, "from_did_not_allowed"),
])
async def test_a_pbx_cannot_use_another_tenants_configuration_or_did(
    vhost: Vhost, bridge: Bridge, observer: Observer, flowroute: FlowrouteSimulator, fields: dict[str, str],
    code: str,
) -> None:
    sent = request("acme", **fields)
    async with await as_pbx(vhost, "acme") as pbx:
        await publish(pbx, names.requests_exchange(PREFIX), "outbound.acme", encoder.encode(sent))
    seen = await observer.statuses(lambda s: any(st.client_message_id == sent.client_message_id for _, st in s))
    ((key, failed),) = [(k, s) for k, s in seen if s.client_message_id == sent.client_message_id]
    assert key == "status.acme.failed" and failed.reason_code == code
    assert flowroute.requests == []


@pytest.mark.parametrize(("exchange", "key"), [(f"{PREFIX}.status", "status.beta.#"), (f"{PREFIX}.pbx", "beta.#"),
                                               (f"{PREFIX}.status", "#"), (f"{PREFIX}.pbx", "#")])
async def test_a_pbx_cannot_bind_to_another_tenants_statuses_or_texts(vhost: Vhost, bridge: Bridge,
                                                                       exchange: str, key: str) -> None:
    async with await as_pbx(vhost, "acme") as pbx:
        channel = await pbx.channel()
        queue = await channel.declare_queue(f"pbx-acme.spy-{uuid.uuid4().hex[:6]}", exclusive=True)
        with pytest.raises(REFUSED):
            await queue.bind(exchange, routing_key=key)


@pytest.mark.parametrize("queue", [names.dead_queue(PREFIX), names.stage_queue(PREFIX, "outbound"),
                                   names.stage_queue(PREFIX, "delivery"), names.unrouted_queue(PREFIX)])
async def test_a_pbx_cannot_read_the_bridges_queues(vhost: Vhost, bridge: Bridge, queue: str) -> None:
    """Dead letters and stage queues hold every tenant's messages."""
    async with await as_pbx(vhost, "acme") as pbx:
        channel = await pbx.channel()
        with pytest.raises(REFUSED):
            await (await channel.get_queue(queue, ensure=False)).get(fail=False, no_ack=False)


# ----- a webhook token trying to touch another tenant's data ----------------------------------------
async def beta_message(vhost: Vhost, observer: Observer) -> tuple[str, str]:
    """beta's PBX sends one text; returns its client message id and Flowroute id once accepted."""
    sent = request("beta", cmid=f"beta-secret-{uuid.uuid4().hex[:6]}")
    async with await as_pbx(vhost, "beta") as pbx:
        await publish(pbx, names.requests_exchange(PREFIX), "outbound.beta", encoder.encode(sent))
    seen = await observer.statuses(lambda s: any(st.client_message_id == sent.client_message_id
                                                 and st.state == "delivered" for _, st in s))
    (mdr_id,) = {st.mdr_id for _, st in seen if st.client_message_id == sent.client_message_id and st.mdr_id}
    assert mdr_id is not None
    return sent.client_message_id, mdr_id


def spam_dlr(mdr_id: str) -> bytes:
    return msgspec.json.encode(dlr_payload(mdr_id, level=2, status="failed", code=1010, description="spam"))


def unknown_dlrs(bridge: Bridge) -> float:
    """DLRs acme's webhook counted as for a message this configuration never sent."""
    value = bridge.metrics.registry.get_sample_value("smsbridge_dlr_unknown_message_total", {"config": "main"})
    return value or 0.0


async def test_a_dlr_with_one_tenants_token_cannot_touch_anothers_message(
    vhost: Vhost, bridge: Bridge, observer: Observer, http: aiohttp.ClientSession,
) -> None:
    cmid, mdr_id = await beta_message(vhost, observer)
    before = await bridge.ledger.receipt_target(Scope("beta", "beta-main"), mdr_id)  # type: ignore[union-attr]
    assert before is not None
    counted = unknown_dlrs(bridge)
    status, _ = await post(http, hook_url(bridge.receiver_url), spam_dlr(mdr_id))  # acme's token
    assert status == 200
    # Not acme's message: counted and logged, never forwarded (issue 18), so nothing reaches any stream.
    await eventually(lambda: unknown_dlrs(bridge) == counted + 1, what="the DLR counted as not this config's")
    seen = await observer.drain()
    assert not [st for _, st in seen if st.mdr_id == mdr_id and st.state == "failed"]
    assert all(key.startswith("status.beta.") for key, st in seen if st.client_message_id == cmid)
    history = await bridge.ledger.history(before.id)  # type: ignore[union-attr]
    assert "failed" not in [h.state for h in history]  # beta's history untouched


async def test_a_bare_number_as_a_dlr_id_is_never_a_ledger_row(
    vhost: Vhost, bridge: Bridge, observer: Observer, http: aiohttp.ClientSession,
) -> None:
    await beta_message(vhost, observer)
    counted = unknown_dlrs(bridge)
    for row_id in ("1", "2", "3", "4"):
        assert (await post(http, hook_url(bridge.receiver_url), spam_dlr(row_id)))[0] == 200
    await eventually(lambda: unknown_dlrs(bridge) == counted + 4, what="four DLRs counted as unknown")
    seen = await observer.drain()
    assert [st for _, st in seen if st.mdr_id in {"1", "2", "3", "4"}] == []  # no row's client id leaked


async def test_a_client_id_in_the_dlr_url_stays_on_the_tokens_own_stream(
    vhost: Vhost, bridge: Bridge, observer: Observer, http: aiohttp.ClientSession,
) -> None:
    cmid, mdr_id = await beta_message(vhost, observer)
    url = f"{hook_url(bridge.receiver_url)}?cmid={cmid}"
    assert (await post(http, url, spam_dlr(mdr_id)))[0] == 200
    seen = await observer.statuses(lambda s: any(st.mdr_id == mdr_id and st.state == "failed" for _, st in s))
    assert all(key.startswith("status.acme.") for key, st in seen if st.state == "failed")


async def test_one_tenants_token_opens_no_other_configurations_webhook(
    bridge: Bridge, http: aiohttp.ClientSession,
) -> None:
    body = msgspec.json.encode(payload("sms_jsonapi_2024"))
    assert (await post(http, hook_url(bridge.receiver_url, config="beta-main", token=TOKEN), body))[0] == 404
    assert (await post(http, hook_url(bridge.receiver_url, config="main", token=BETA_TOKEN), body))[0] == 404


async def test_a_text_to_another_tenants_did_is_parked_not_delivered(
    bridge: Bridge, observer: Observer, http: aiohttp.ClientSession,
) -> None:
    doc = payload("sms_jsonapi_2024")
    doc["data"]["attributes"]["to"] = BETA_DID.removeprefix("+")
    status, answer = await post(http, hook_url(bridge.receiver_url), msgspec.json.encode(doc))  # acme's token
    assert (status, answer["status"]) == (200, "parked")
    await observer.dead("unknown_did")
    assert [key for key in await observer.texts() if key.startswith("beta.")] == []
