"""Issue 16 points 4 and 7 at the running receiver: field limits answered 400 naming the field,
nesting and odd digits refused cleanly, slow senders cut off."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest

from smsbridge.config import Settings
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.fixtures import payload
from tests.support.settings import settings


def quick_reads(prefix: str, seconds: float = 1.0) -> Settings:
    base = settings(prefix=prefix)
    return msgspec.structs.replace(base, receiver=msgspec.structs.replace(base.receiver, read_timeout_s=seconds))


def sms(**attributes: object) -> bytes:
    doc = payload("sms_jsonapi_2024")
    doc["data"]["attributes"].update(attributes)
    return msgspec.json.encode(doc)


@pytest.mark.parametrize(("body", "field"), [
    (sms(**{"from": "1" * 40}), "from"),
    (sms(body="a\x00b"), "body"),
    (msgspec.json.encode({**payload("legacy_flat_mdr1"), "id": "m" * 81}), "id"),
    (msgspec.json.encode({**payload("legacy_flat_mdr1"), "id": "mdr2-\r\nX-Evil: 1"}), "id"),
    (msgspec.json.encode({"data": {"type": "delivery_receipt", "id": "mdr2-1",
                                   "attributes": {"status_code": 2**40, "status": "x"}}}), "status_code"),
])
async def test_a_field_beyond_its_limit_is_400_naming_it(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, body: bytes, field: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    status, answer = await post(http, hook_url(bridge.receiver_url), body)
    assert (status, answer["error"], answer["field"]) == (400, "invalid_field", field)
    assert f"field '{field}'" in str(answer["detail"])


async def test_deep_nesting_and_superscript_digits_are_not_500(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    nested = b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, answer = await post(http, hook_url(bridge.receiver_url), nested)
    assert (status, answer["error"]) == (400, "invalid_json")
    receipt = {"data": {"type": "delivery_receipt", "id": "mdr2-1", "attributes": {"status_code": "²", "level": "٣"}}}
    status, answer = await post(http, hook_url(bridge.receiver_url), msgspec.json.encode(receipt))
    assert status == 200 and answer["status"] == "accepted"


async def _slow_request(url: str, *, stall_after_headers: bool) -> tuple[bytes, float]:
    """Open a connection, send part of a request, stall; return what the server said and when it
    closed the connection (seconds after the start)."""
    parts = urlsplit(url)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n")
    writer.write((head + "\r\n{\"data\": ").encode() if stall_after_headers else head.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=60)  # b"" or the answer, then EOF
    writer.close()
    return answer, time.monotonic() - started


async def test_a_stalled_body_gets_408_and_its_connection_closed(
    start_bridge: StartBridge, prefix: str
) -> None:
    bridge = await start_bridge(quick_reads(prefix))
    answer, took = await _slow_request(hook_url(bridge.receiver_url), stall_after_headers=True)
    assert answer.startswith(b"HTTP/1.1 408") and b'"error":"timeout"' in answer
    assert took < 30


async def test_headers_that_never_end_get_the_connection_closed(
    start_bridge: StartBridge, prefix: str
) -> None:
    bridge = await start_bridge(quick_reads(prefix))
    answer, took = await _slow_request(hook_url(bridge.receiver_url), stall_after_headers=False)
    assert answer == b"" and took < 30


async def test_two_hundred_slow_senders_are_all_cut_off_and_a_webhook_still_gets_through(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(quick_reads(prefix))
    url = hook_url(bridge.receiver_url)
    slow = [asyncio.create_task(_slow_request(url, stall_after_headers=n % 2 == 0)) for n in range(200)]
    status, _ = await post(http, url, sms())
    results = await asyncio.gather(*slow)
    assert status == 200
    assert all(took < 45 for _, took in results)  # each closed by the server, none held
