"""The Flowroute messaging API client: one POST per message, answers classified by `outcome`."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from smsbridge.config import SmsConfig
from smsbridge.events import DispatchRequest
from smsbridge.flowroute.outcome import Outcome, Retry, classify_send

CONTENT_TYPE = "application/vnd.api+json"


def message_body(request: DispatchRequest) -> dict[str, Any]:
    """The JSON:API body for `POST /v2.2/messages` (E.164 with `+`, as v2.2 documents)."""
    attributes: dict[str, Any] = {"to": request.to, "from": request.from_, "body": request.body}
    if request.is_mms:
        attributes["is_mms"] = True
        attributes["media_urls"] = list(request.media_urls)
    if request.dlr_callback:
        attributes["dlr_callback"] = request.dlr_callback
    return {"data": {"type": "message", "attributes": attributes}}


class FlowrouteClient:
    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, timeout_s: float) -> None:
        self._session = session
        self._url = f"{base_url.rstrip('/')}/v2.2/messages"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s

    async def send(self, config: SmsConfig, request: DispatchRequest) -> Outcome:
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Accept": CONTENT_TYPE,
            "Authorization": aiohttp.encode_basic_auth(config.access_key.reveal(), config.secret_key.reveal()),
        }
        try:
            async with self._session.post(self._url, data=msgspec.json.encode(message_body(request)),
                                          headers=headers, timeout=self._timeout) as response:
                raw = await response.read()
                return classify_send(response.status, _json_or_none(raw), response.headers,
                                     from_number=request.from_)
        except TimeoutError:
            return Retry(f"Flowroute did not answer within {self._timeout_s:g} s (it may have accepted the message)")
        except aiohttp.ClientError as exc:
            return Retry(f"Flowroute unreachable: {exc.__class__.__name__}: {exc}")


def _json_or_none(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None
