"""The Flowroute messaging API client: one POST per message, answers classified by `outcome`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec

from smsbridge.config import SmsConfig
from smsbridge.errors import RetryableError
from smsbridge.events import DispatchRequest
from smsbridge.flowroute.outcome import Outcome, Retry, classify_send
from smsbridge.flowroute.sent_lookup import Lookup, SentText
from smsbridge.numbers import flowroute_format

CONTENT_TYPE = "application/vnd.api+json"


def message_body(request: DispatchRequest) -> dict[str, Any]:
    """The JSON:API body for `POST /v2.2/messages`: numbers in the 11-digit form every version of
    the docs accepts; a media-only MMS has no `body` at all (as known clients send it)."""
    attributes: dict[str, Any] = {"to": flowroute_format(request.to), "from": flowroute_format(request.from_)}
    if request.body or not request.is_mms:
        attributes["body"] = request.body
    if request.is_mms:
        attributes["is_mms"] = True
        attributes["media_urls"] = list(request.media_urls)
    if request.dlr_callback:
        attributes["dlr_callback"] = request.dlr_callback
    return {"data": {"type": "message", "attributes": attributes}}


class FlowrouteClient:
    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, timeout_s: float,
                 on_answer: Callable[[str, int], None] = lambda account, status: None) -> None:
        self._session = session
        self._on_answer = on_answer
        self._url = f"{base_url.rstrip('/')}/v2.2/messages"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s

    async def _post(self, config: SmsConfig, request: DispatchRequest) -> Outcome:
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Accept": CONTENT_TYPE,
            "Authorization": aiohttp.encode_basic_auth(config.access_key.reveal(), config.secret_key.reveal()),
        }
        try:
            async with self._session.post(self._url, data=msgspec.json.encode(message_body(request)),
                                          headers=headers, timeout=self._timeout) as response:
                raw = await response.read()
                self._on_answer(config.account_name, response.status)
                return classify_send(response.status, _json_or_none(raw), response.headers,
                                     from_number=request.from_)
        except (TimeoutError, aiohttp.ClientError):
            self._on_answer(config.account_name, 0)
            raise

    async def send(self, config: SmsConfig, request: DispatchRequest) -> Outcome:
        try:
            return await self._post(config, request)
        except TimeoutError:
            return Retry(f"Flowroute did not answer within {self._timeout_s:g} s (it may have accepted the message)",
                         maybe_sent=True)
        except aiohttp.ClientConnectorError as exc:
            return Retry(f"Flowroute unreachable: {exc.__class__.__name__}: {exc}")
        except aiohttp.ClientError as exc:  # the request went out; the answer was lost
            return Retry(f"Flowroute unreachable: {exc.__class__.__name__}: {exc}", maybe_sent=True)

    async def find_sent(self, config: SmsConfig, request: DispatchRequest, *, since: datetime,
                        until: datetime, max_pages: int = 10) -> Lookup:
        """Every outbound message with the same from, to and body sent in [since, until], from
        Flowroute's message list. Raises `RetryableError` when the list cannot be read (then we
        must not send: we could not rule out a duplicate); `complete` is False when there were
        more pages than `max_pages`."""
        headers = {"Accept": CONTENT_TYPE,
                   "Authorization": aiohttp.encode_basic_auth(config.access_key.reveal(), config.secret_key.reveal())}
        url: str | None = self._url
        params: dict[str, str] | None = {"start_date": flowroute_time(since), "end_date": flowroute_time(until),
                                         "limit": "100"}
        found: list[SentText] = []
        for _ in range(max_pages):
            if url is None:
                return Lookup(found, complete=True)
            page = await self._get(url, params, headers)
            found += [SentText(str(record["id"]), _timestamp(record)) for record in page.get("data") or []
                      if _same_message(record, request) and record.get("id")]
            url, params = (page.get("links") or {}).get("next"), None
        return Lookup(found, complete=url is None)

    async def _get(self, url: str, params: dict[str, str] | None, headers: dict[str, str]) -> dict[str, Any]:
        try:
            async with self._session.get(url, params=params, headers=headers, timeout=self._timeout) as response:
                body = _json_or_none(await response.read())
                if response.status != 200 or not isinstance(body, dict):
                    raise RetryableError(f"Flowroute message lookup answered {response.status}")
                return body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableError(f"Flowroute message lookup failed: {exc!r}") from None


def flowroute_time(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:mm:ss.SSZ` in UTC, the list endpoint's date format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4] + "Z"


def _timestamp(record: dict[str, Any]) -> datetime | None:
    """When Flowroute took the message (its `timestamp`, UTC); None if absent or unreadable."""
    value = (record.get("attributes") or {}).get("timestamp")
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _digits(number: Any) -> str:
    return str(number or "").lstrip("+")


def _same_message(record: Any, request: DispatchRequest) -> bool:
    attributes = record.get("attributes") if isinstance(record, dict) else None
    if not isinstance(attributes, dict) or attributes.get("direction", "outbound") != "outbound":
        return False
    return (_digits(attributes.get("to")) == _digits(request.to)
            and _digits(attributes.get("from")) == _digits(request.from_)
            and (attributes.get("body") or "") == request.body)


def _json_or_none(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None
