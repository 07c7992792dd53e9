"""What "at least once, with an idempotency key" means for a PBX, shown with real processes: a
delivery worker killed after the PBX stored a text but before the ledger heard of it leaves a
claim whose lease runs out; the next worker then hands the text over again, with the same
`Idempotency-Key`. A PBX that keeps the keys it stored shows the text once."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.sandbox.pbx import FakePbx
from smsbridge.testing.config import FAST_RETRY, bridge_document, merge, write
from tests.support import processes
from tests.support.fixtures import raw_payload
from tests.support.ledger import ledger_location
from tests.support.settings import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e


async def test_a_worker_killed_after_the_pbx_stored_a_text_repeats_it_with_the_same_idempotency_key(
    tmp_path: Path, amqp_url: str, prefix: str, pbx: FakePbx, channel: AbstractChannel
) -> None:
    port = free_port()
    async with ledger_location("sqlite", tmp_path) as (url, schema):  # the claim is the same on both
        doc = bridge_document(amqp_url=amqp_url, prefix=prefix, ledger_url=url, port=port, pbx_url=pbx.url)
        # A short lease (2 × the PBX timeout + 10 s): the repeat comes 14 s after the claim.
        doc = merge(doc, FAST_RETRY, {"ledger": {"schema": schema}, "broker": {"publish_timeout_s": 2}})
        doc["pbx_targets"] = [{**doc["pbx_targets"][0], "timeout_s": 2}]
        config = write(tmp_path / "bridge.toml", doc)
        pbx.delay_s = 1.0  # the PBX stores each text a second after it arrived
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        first = await processes.start(config, first_log)
        await processes.wait_ready(first, first_log, url=f"http://127.0.0.1:{port}/readyz")
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/webhooks/flowroute/main/{processes.ENV['E2E_TOKEN']}",
                data=raw_payload("sms_jsonapi_2024")) as response:
            assert response.status == 200
        await eventually(lambda: pbx.arrived == 1, what="the text reached the PBX")
        first.kill()  # SIGKILL while the PBX holds the text: it stores it, nobody hears its 200
        await first.wait()
        second = await processes.start(config, second_log, "delivery")
        try:
            await processes.wait_ready(second, second_log)
            stored = await pbx.wait_for(2, timeout=60)
        finally:
            assert await processes.stop(second) == 0
    keys = [headers["Idempotency-Key"] for status, _, headers in pbx.attempts if status == 200]
    assert len(stored) == 2 and keys[0] == keys[1] == f"{stored[0]['mdr_id']}:101", keys
    assert len(set(keys)) == 1  # what a PBX that keeps the keys it stored shows: one text
