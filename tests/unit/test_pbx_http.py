"""The HTTP delivery adapter: how PBX answers are classified, and the request it sends to the demo PBX on loopback."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from smsbridge.backoff import retry_after_seconds
from smsbridge.config import HttpTarget
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, utcnow
from smsbridge.pbx.http import HttpAdapter, classify_pbx_answer
from smsbridge.sandbox.pbx import FakePbx
from smsbridge.secret import Secret
from tests.support.http_server import serving
from tests.support.settings import free_port


def delivery() -> InboundDelivery:
    return InboundDelivery(tenant="acme", config_id="main", mdr_id="mdr2-9", from_="+12065550199",
                           to="+12065550100", extension="101", body="hi", received_at=utcnow())


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    classify_pbx_answer(status, "", None)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_answers_are_retried(status: int) -> None:
    with pytest.raises(RetryableError):
        classify_pbx_answer(status, "busy", None)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_permanent_with_the_pbx_answer(status: int) -> None:
    with pytest.raises(PermanentError) as info:
        classify_pbx_answer(status, '{"error":"unknown extension 999"}', None)
    assert info.value.code == f"pbx_{status}" and "unknown extension 999" in info.value.reason


def test_retry_after_is_honoured() -> None:
    with pytest.raises(RetryableError) as info:
        classify_pbx_answer(503, "", "7")
    assert info.value.retry_after == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None


async def test_request_carries_auth_and_idempotency_key(pbx: FakePbx, http: aiohttp.ClientSession) -> None:
    target = HttpTarget(tenant="acme", url=pbx.url, auth_header="X-Api-Key", auth_value=Secret("k-123"))
    await HttpAdapter(target, http).deliver(delivery())
    ((status, body, headers),) = pbx.attempts
    assert status == 200 and body["mdr_id"] == "mdr2-9"
    assert headers["X-Api-Key"] == "k-123" and headers["Idempotency-Key"] == "mdr2-9:101"


async def test_connection_errors_are_retryable(http: aiohttp.ClientSession) -> None:
    target = HttpTarget(tenant="acme", url=f"http://127.0.0.1:{free_port()}/sms")
    with pytest.raises(RetryableError, match="PBX unreachable"):
        await HttpAdapter(target, http).deliver(delivery())


async def test_timeouts_are_retryable(pbx: FakePbx, http: aiohttp.ClientSession) -> None:
    pbx.delay_s = 3.0
    target = HttpTarget(tenant="acme", url=pbx.url, timeout_s=0.3)
    with pytest.raises(RetryableError, match="within 0.3 s"):
        await HttpAdapter(target, http).deliver(delivery())


async def test_a_redirect_from_the_pbx_is_not_followed_and_is_permanent(http: aiohttp.ClientSession) -> None:
    """A PBX (or whatever answers at its URL) that redirects could send the text, with the PBX's
    credentials, anywhere: the 307 is a permanent refusal naming it; the other server sees nothing."""
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.headers.get("X-Api-Key", ""))
        return web.Response()

    async with serving("POST", "/steal", elsewhere) as other:
        async def redirecting(_: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{other}/steal")

        async with serving("POST", "/sms", redirecting) as pbx_url:
            target = HttpTarget(tenant="acme", url=f"{pbx_url}/sms", auth_header="X-Api-Key", auth_value=Secret("k"))
            with pytest.raises(PermanentError) as info:
                await HttpAdapter(target, http).deliver(delivery())
    assert info.value.code == "pbx_307" and hits == []
