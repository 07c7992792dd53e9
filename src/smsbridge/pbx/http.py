"""HTTP delivery: POST the delivery as JSON to the tenant's PBX URL.

2xx delivered; 408, 429, 5xx, timeouts and refused connections are retried (a Retry-After in
seconds is honoured); any other 4xx, and a redirect (never followed), is permanent and
dead-lettered with the PBX's answer.
Every request carries `Idempotency-Key: <flowroute id>:<extension>` so a PBX can drop repeats.
"""

from __future__ import annotations

import aiohttp

from smsbridge.backoff import retry_after_seconds
from smsbridge.config import HttpTarget
from smsbridge.destinations import DestinationRefused, refusal
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, encoder

RETRYABLE_STATUSES = frozenset({408, 425, 429})
ANSWER_EXCERPT = 300


def classify_pbx_answer(status: int, body: str, retry_after: str | None) -> None:
    """Raise the right error for a PBX answer; return quietly for success."""
    if 200 <= status < 300:
        return
    excerpt = body[:ANSWER_EXCERPT].strip()
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(f"PBX answered {status}: {excerpt}", retry_after=retry_after_seconds(retry_after))
    raise PermanentError(f"PBX refused the delivery with {status}: {excerpt}", code=f"pbx_{status}")


async def post_to_pbx(session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str],
                      timeout: aiohttp.ClientTimeout) -> None:
    """POST to a PBX; return on 2xx, raise RetryableError or PermanentError as the module says.
    A redirect is not followed (it could lead anywhere, with the PBX's credentials): a 3xx is a
    permanent `pbx_3xx` naming the status. A URL that a guarded session
    (`smsbridge.destinations`) refuses is a permanent error too."""
    try:
        async with session.post(url, data=data, headers=headers, timeout=timeout,
                                allow_redirects=False) as response:
            body = await response.text(errors="replace")
            classify_pbx_answer(response.status, body, response.headers.get("Retry-After"))
    except TimeoutError:
        raise RetryableError(f"PBX did not answer within {timeout.total:g} s") from None
    except (DestinationRefused, aiohttp.ClientError) as exc:
        if (refused := refusal(exc)) is not None:
            raise PermanentError(f"not called: {refused}", code="destination_refused") from None
        raise RetryableError(f"PBX unreachable: {exc.__class__.__name__}: {exc}") from None


class HttpAdapter:
    kind = "http"

    def __init__(self, target: HttpTarget, session: aiohttp.ClientSession) -> None:
        self._target = target
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=target.timeout_s)

    def _headers(self, delivery: InboundDelivery) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.idempotency_key}
        if self._target.auth_value is not None:
            headers[self._target.auth_header] = self._target.auth_value.reveal()
        return headers

    async def deliver(self, delivery: InboundDelivery) -> None:
        await post_to_pbx(self._session, self._target.url, encoder.encode(delivery), self._headers(delivery),
                          self._timeout)

    async def close(self) -> None:
        return None
