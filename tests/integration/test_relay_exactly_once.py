"""A keyed relay send is one text, also when its client retries after the bridge lost track of
the first try (issue 19): a real receiver, outbound worker and dispatcher, RabbitMQ, the ledger
and the Flowroute simulator. Two ways the first try ends in doubt:

- the crash window: the broker confirmed the publish, but the row was never marked `queued`
  (the process died; here the ledger refuses that one UPDATE, through a trigger, which leaves
  the row exactly as the crash would). Its key answers 409 until the row is stale, then the
  retry publishes the same request again under the first id.
- the ambiguous publish: the broker stored the request but its confirm never came in time
  (`ConfirmHoldingProxy`), so the client got a 503; its retry publishes it again under the first id.

In both, the dispatcher's dedupe by (tenant, `client_message_id`) makes the second copy no
second text. Tenant globex uses the same key string throughout: keys are per tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.config import LedgerSettings, Settings
from smsbridge.events import StatusEvent
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Ledger
from smsbridge.pbx_client import status_queue, watch
from smsbridge.sandbox.flowroute_pbx import send_jsonapi
from tests.conftest import StartBridge
from tests.support.broker import take
from tests.support.confirm_proxy import ConfirmHoldingProxy
from tests.support.relay import FREEPBX, GLOBEX, GLOBEX_DID, relay_queue, relay_settings
from tests.support.settings import DID_MAIN
from tests.support.wait import eventually

__all__ = ["relay_queue"]  # the fixture, used by name
MOBILE = "2065550199"
KEY = {"Idempotency-Key": "pbx-send-4411"}  # both tenants use this very string
PUBLISH_TIMEOUT_S = 1.0  # so a `pending` row is stale after 2 * 1 + 5 s
SENDERS = {"acme": (FREEPBX, DID_MAIN), "globex": (GLOBEX, GLOBEX_DID)}

# The one UPDATE that marks a send `queued` fails, as if the process had died right before it.
FAIL_QUEUED = {
    "sqlite": ["""CREATE TRIGGER crash_before_queued BEFORE UPDATE OF state ON relay_sends
                  WHEN NEW.state = 'queued' BEGIN SELECT RAISE(ABORT, 'crash window'); END"""],
    "postgresql": ["""CREATE FUNCTION crash_before_queued() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN RAISE EXCEPTION 'crash window'; END $$""",
                   """CREATE TRIGGER crash_before_queued BEFORE UPDATE OF state ON relay_sends
                      FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION crash_before_queued()"""],
}
HEAL = {"sqlite": ["DROP TRIGGER crash_before_queued"],
        "postgresql": ["DROP TRIGGER crash_before_queued ON relay_sends"]}


def run_sql(statements: dict[str, list[str]]) -> Any:
    def run(c: sa.Connection) -> None:
        for statement in statements[c.dialect.name]:
            c.execute(sa.text(statement))
    return run


@pytest.fixture
async def side_ledger(ledger_settings: LedgerSettings) -> AsyncIterator[Ledger]:
    """A second handle on the bridge's ledger, for the test's own statements."""
    ledger = Ledger.open(ledger_settings.url, schema_name=ledger_settings.schema)
    await ledger.upgrade()
    yield ledger
    await ledger.close()


def bridge_settings(prefix: str, flowroute: FlowrouteSimulator, ledger: LedgerSettings | None = None,
                    broker_url: str | None = None) -> Settings:
    flowroute.dlr_delay_s = 30  # keep receipts out of this picture: each copy's status is `accepted`
    flowroute.accounts["AK-test"].numbers = {DID_MAIN, GLOBEX_DID}
    base = relay_settings(prefix, api_base=flowroute.url)
    broker = msgspec.structs.replace(base.broker, publish_timeout_s=PUBLISH_TIMEOUT_S,
                                     urls=[broker_url] if broker_url else base.broker.urls)
    return msgspec.structs.replace(base, broker=broker, ledger=ledger or base.ledger)


async def send(http: aiohttp.ClientSession, bridge: Bridge, tenant: str) -> tuple[int, Any]:
    credentials, did = SENDERS[tenant]
    return await send_jsonapi(http, f"{bridge.receiver_url}/flowroute", credentials, to=MOBILE, from_=did,
                              body="Your table is ready", headers=KEY)


async def retry_until_accepted(http: aiohttp.ClientSession, bridge: Bridge, tenant: str,
                               allowed: set[int]) -> str:
    """The client's retries with the same key until a 202 (the others only `allowed`): its id."""
    answers: list[tuple[int, Any]] = []

    async def accepted() -> bool:
        answers.append(await send(http, bridge, tenant))
        assert answers[-1][0] in allowed | {202}, answers[-1]
        return answers[-1][0] == 202

    await eventually(accepted, timeout=60, interval=0.5, what=f"a 202 for {tenant}'s retry")
    return str(answers[-1][1]["data"]["id"])


def texts_from(flowroute: FlowrouteSimulator, did: str) -> int:
    return sum(1 for r in flowroute.requests if r["body"]["data"]["attributes"]["from"] == did.removeprefix("+"))


async def accepted_twice(queue: AbstractQueue, message_id: str, seen: int = 0) -> None:
    """Each copy of the request gets its `accepted` status (the repeat's is the current status):
    once both came, the second copy has been through the dispatcher."""
    statuses: list[StatusEvent] = []
    while seen + len(statuses) < 2:
        came = await watch(queue, message_id, until=frozenset({"accepted"}), timeout=30)
        assert came, f"{len(statuses)} of {2 - seen} statuses came"
        statuses += came
    assert [s.state for s in statuses] == ["accepted"] * (2 - seen)


async def test_a_retry_after_the_crash_window_republishes_the_first_id_and_sends_one_text(
    ledger_settings: LedgerSettings, side_ledger: Ledger, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    http: aiohttp.ClientSession, channel: AbstractChannel, prefix: str, relay_queue: str,
) -> None:
    bridge = await start_bridge(bridge_settings(prefix, flowroute, ledger_settings))
    async with status_queue(channel, prefix, "acme") as acme, status_queue(channel, prefix, "globex") as globex:
        await side_ledger._db.write(run_sql(FAIL_QUEUED))
        first: dict[str, str] = {}
        for tenant in SENDERS:  # confirmed by the broker; the client lost the answer
            status, doc = await send(http, bridge, tenant)
            assert status == 202, doc
            first[tenant] = doc["data"]["id"]
        assert first["acme"] != first["globex"]
        await side_ledger._db.write(run_sql(HEAL))  # the process that died is replaced
        found = await side_ledger.relay_send("acme", first["acme"])
        assert found is not None and found.state == "pending"

        status, doc = await send(http, bridge, "acme")  # in flight, for all the bridge knows yet
        assert status == 409, doc
        for tenant, queue in (("acme", acme), ("globex", globex)):
            assert await retry_until_accepted(http, bridge, tenant, allowed={409}) == first[tenant]
            await accepted_twice(queue, first[tenant])
    assert (texts_from(flowroute, DID_MAIN), texts_from(flowroute, GLOBEX_DID)) == (1, 1)
    found = await side_ledger.relay_send("acme", first["acme"])
    assert found is not None and found.state == "queued"


@pytest.fixture
async def confirms() -> AsyncIterator[ConfirmHoldingProxy]:
    proxy = ConfirmHoldingProxy("127.0.0.1", 5672)
    await proxy.start()
    yield proxy
    await proxy.release()
    await proxy.cut()


async def test_a_retry_after_an_ambiguous_publish_republishes_the_first_id_and_sends_one_text(
    confirms: ConfirmHoldingProxy, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    http: aiohttp.ClientSession, channel: AbstractChannel, prefix: str, relay_queue: str,
) -> None:
    bridge = await start_bridge(bridge_settings(prefix, flowroute, broker_url=confirms.url))
    requests = {names.request_routing_key(tenant) for tenant in SENDERS}
    async with status_queue(channel, prefix, "acme") as acme, status_queue(channel, prefix, "globex") as globex:
        confirms.hold(lambda key: key in requests)  # stored by the broker, never confirmed in time
        for tenant in SENDERS:
            status, doc = await send(http, bridge, tenant)
            assert status == 503, doc
        first: dict[str, str] = {}
        for tenant, queue in (("acme", acme), ("globex", globex)):  # stored all the same, and sent
            (message,) = await take(channel, queue.name, timeout=30)
            first[tenant] = msgspec.json.decode(message.body, type=StatusEvent).client_message_id
        assert (texts_from(flowroute, DID_MAIN), texts_from(flowroute, GLOBEX_DID)) == (1, 1)
        await confirms.release()

        for tenant, queue in (("acme", acme), ("globex", globex)):
            assert await retry_until_accepted(http, bridge, tenant, allowed={503}) == first[tenant]
            await accepted_twice(queue, first[tenant], seen=1)
    assert (texts_from(flowroute, DID_MAIN), texts_from(flowroute, GLOBEX_DID)) == (1, 1)
