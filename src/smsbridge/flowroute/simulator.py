"""A Flowroute simulator: a real aiohttp server that behaves as flowroute-api.md describes.

- `POST /v2.1/messages`, `POST /v2.2/messages`: Basic auth (Access Key / Secret Key), JSON:API or
  compact body, Flowroute-shaped errors, `202` with an `mdr2-…` id.
- Rate limits counted the way Flowroute counts them: every attempt of an account inside a
  1000 ms window, rejected ones included; over the limit → `429`.
- `GET /v2.x/messages/{id}` (one MDR) and `GET /v2.x/messages?start_date=…` (list, paged), inbound
  messages included; MDRs, dates and paging as `sim_records` reads the docs.
- Every answer is `application/vnd.api+json`; errors are Flowroute's documented object (id,
  status, title, detail) and nothing more. A `from` that is not one of the account's `numbers`
  gets 403; numbers outside the US and Canada get 422.
- DLRs to the message's `dlr_callback`: level 1 (`smsc submit`) then level 2, the outcome chosen
  per destination number (`behaviours`).
- Inbound injection (`inject_inbound`, `POST /_sim/inbound`) in both payload shapes, resent like
  Flowroute does when the webhook does not answer 200.
- Fault injection (`faults`, `POST /_sim/faults`): latency, jitter (a random delay before the
  attempt is counted, as a network path adds), a 5xx ratio, dropped connections, and a script of
  statuses for the next sends.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

from smsbridge.flowroute.payloads import dlr_payload, error_body, inbound_payload, new_mdr_id
from smsbridge.flowroute.sim_media import SimMedia
from smsbridge.flowroute.sim_records import BadQuery, list_query, outbound_mdr, send_problem
from smsbridge.flowroute.webhook import parse_timestamp
from smsbridge.segments import body_info

log = structlog.get_logger("smsbridge.simulator")
WINDOW_S = 1.0

# Destination behaviours: what happens to a message sent to that number.
DLR_OUTCOMES: dict[str, tuple[str, int, str]] = {
    "delivered": ("delivered", 1004, "Message delivered to handset"),
    "buffered": ("message buffered", 1003, "Message accepted by Carrier"),
    "dlr_failed": ("delivery failed", 1007, "Message failed"),
    "dlr_opted_out": ("delivery failed", 1110, "User Opted Out (STOP)"),
    "dlr_spam": ("delivery failed", 1150, "Spam"),
}
# Refusals at send time. Where Flowroute puts 1110 is undocumented: "opted_out" says it in
# `detail`, the other two only in `title` (the bridge must find it anywhere).
API_REFUSALS: dict[str, tuple[int, str, str]] = {
    "opted_out": (400, "Bad Request", "1110: User Opted Out (STOP)"),
    "opted_out_title": (400, "1110", ""),
    "opted_out_403": (403, "1110 User Opted Out", ""),
    "unregistered": (403, "ActionNotAuthorizedError", ""),
    "invalid": (422, "Unprocessable Entity", "Invalid value"),
}
CONTENT_TYPE = "application/vnd.api+json"


@dataclass
class Faults:
    latency_s: float = 0.0
    jitter_s: float = 0.0  # each send reaches "Flowroute" (is counted) 0 to jitter_s later, at random
    error_ratio: float = 0.0
    drop_ratio: float = 0.0
    respond_delay_s: float = 0.0  # accept, then wait this long before answering (a crash window)
    script: list[int] = field(default_factory=list)


@dataclass
class Account:
    secret: str
    sms_per_second: int | None = 5
    mms_per_second: int | None = 1
    attempts: list[tuple[float, bool]] = field(default_factory=list)  # (monotonic time, is_mms)
    numbers: set[str] | None = None  # the account's numbers as +E.164; None: any (the sandbox's choice)


class FlowrouteSimulator:
    def __init__(self, accounts: dict[str, str], *, sms_per_second: int | None = 5, mms_per_second: int | None = 1,
                 behaviours: dict[str, str] | None = None, dlr_delay_s: float = 0.05,
                 webhook_resend_interval_s: float = 30.0, seed: int | None = None,
                 numbers: dict[str, list[str]] | None = None, fetch_media: bool = False) -> None:
        self.accounts = {key: Account(secret, sms_per_second, mms_per_second) for key, secret in accounts.items()}
        for key, owned in (numbers or {}).items():
            self.accounts[key].numbers = {_plus(n) for n in owned}
        self.behaviours = dict(behaviours or {})
        self.faults = Faults()
        self.messages: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []  # every authenticated send: body, auth user, status
        self.list_reads: list[float] = []  # when the message list was read (time.monotonic())
        self.dlr_posts: list[tuple[str, int]] = []
        self.dlr_delay_s = dlr_delay_s
        self.webhook_resend_interval_s = webhook_resend_interval_s
        self._random = random.Random(seed)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.media = SimMedia()  # sample pictures served for inbound MMS; outbound media fetched
        self.fetch_media = fetch_media  # fetch an MMS's media before accepting it, as Flowroute does

    # ----- lifecycle -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        for version in ("v2.1", "v2.2"):
            app.router.add_post(f"/{version}/messages", self._send)
            app.router.add_get(f"/{version}/messages", self._list)
            app.router.add_get(f"/{version}/messages/{{mdr_id}}", self._lookup)
        app.router.add_post("/_sim/inbound", self._inject_view)
        app.router.add_post("/_sim/faults", self._faults_view)
        app.router.add_get("/_sim/stats", self._stats_view)
        app.router.add_get("/_sim/media/{name}", self.media.serve)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- figures for tests and benchmarks -----------------------------------------------------
    def max_in_window(self, access_key: str, *, mms_only: bool = False, window_s: float = WINDOW_S) -> int:
        """The most attempts any `window_s` window of this account held."""
        times = [t for t, is_mms in self.accounts[access_key].attempts if is_mms or not mms_only]
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def statuses(self) -> list[int]:
        return [r["status"] for r in self.requests]

    # ----- sending ---------------------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        account = self.accounts.get(user)
        return user if account is not None and account.secret == password else None

    def _over_limit(self, account: Account, now: float, is_mms: bool) -> bool:
        if account.sms_per_second is None and (account.mms_per_second is None or not is_mms):
            return False  # no limit applies: skip the count (at 1,000/s it is 1,000 attempts long)
        # Attempts are kept in time order: count back from the newest until one is out of the
        # window (scanning them all made every send slower than the last on a long run).
        recent = recent_mms = 0
        for at, was_mms in reversed(account.attempts):
            if now - at >= WINDOW_S:
                break
            recent += 1
            recent_mms += was_mms
        if account.sms_per_second is not None and recent >= account.sms_per_second:
            return True
        return is_mms and account.mms_per_second is not None and recent_mms >= account.mms_per_second

    async def _send(self, request: web.Request) -> web.StreamResponse:
        user = self._authenticate(request)
        if user is None:
            return _error(401, "Unauthorized", "Authentication failed.")
        raw = await request.read()
        if self.faults.jitter_s:  # the network path before Flowroute counts the attempt
            await asyncio.sleep(self._random.uniform(0, self.faults.jitter_s))
        attributes = _attributes(raw)
        is_mms = attributes is not None and _is_mms(attributes)
        account, now = self.accounts[user], time.monotonic()
        limited = self._over_limit(account, now, is_mms)
        account.attempts.append((now, is_mms))  # Flowroute counts every attempt, rejected ones too
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        if self.faults.drop_ratio and self._random.random() < self.faults.drop_ratio:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        response = await self._media_refusal(attributes) or self._answer(request, attributes, limited, account)
        if self.faults.respond_delay_s:
            await asyncio.sleep(self.faults.respond_delay_s)
        self.requests.append({"user": user, "body": msgspec.json.decode(raw) if attributes is not None else None,
                              "status": response.status, "content_type": request.headers.get("Content-Type")})
        return response

    async def _media_refusal(self, attributes: dict[str, Any] | None) -> web.Response | None:
        urls = (attributes or {}).get("media_urls")
        if not self.fetch_media or not urls or not isinstance(urls, list) or self._session is None:
            return None
        problem = await self.media.check_outbound(self._session, [str(u) for u in urls])
        return web.json_response(error_body(422, "Unprocessable Entity", problem), status=422) if problem else None

    def _answer(self, request: web.Request, attributes: dict[str, Any] | None, limited: bool,
                account: Account) -> web.Response:
        if self.faults.script:
            status = self.faults.script.pop(0)
            return _error(status, "Scripted", f"scripted {status}")
        if limited:
            return _error(429, "Too Many Requests", "rate limit exceeded")
        if self.faults.error_ratio and self._random.random() < self.faults.error_ratio:
            return _error(503, "Service Unavailable", "try again later")
        if attributes is None:
            return _error(400, "Bad Request", "could not parse the request body")
        is_mms = _is_mms(attributes)
        problem = send_problem(attributes, is_mms)
        if problem:
            return _error(422, "Unprocessable Entity", problem)
        if account.numbers is not None and _plus(attributes["from"]) not in account.numbers:
            return _error(403, "ActionNotAuthorizedError", "")  # the documented 403, detail empty
        behaviour = self.behaviours.get(_plus(attributes["to"]), "delivered")
        if behaviour in API_REFUSALS:
            return _error(*API_REFUSALS[behaviour])
        return self._accept(request, attributes, behaviour, is_mms)

    def _accept(self, request: web.Request, attributes: dict[str, Any], behaviour: str,
                is_mms: bool) -> web.Response:
        mdr_id = new_mdr_id()
        segments = body_info(str(attributes.get("body") or "")).segments
        self_url = f"{request.url.origin()}{request.path}/{mdr_id}"  # the version the client used
        self.messages[mdr_id] = outbound_mdr(mdr_id, attributes, is_mms=is_mms, segments=segments,
                                             timestamp=_now(), self_url=self_url)
        callback = attributes.get("dlr_callback")
        if callback:
            self._spawn(self._post_dlrs(str(callback), mdr_id, behaviour))
        return _json({"data": {"type": "message", "id": mdr_id, "links": {"self": self_url}, "price_details": {
            "base_rate": 0.0025, "surcharge_rate": 0.003, "segment_count": segments}}}, 202)

    async def _post_dlrs(self, url: str, mdr_id: str, behaviour: str) -> None:
        attributes = self.messages[mdr_id]["attributes"]
        body = "" if attributes["is_mms"] else attributes["body"]  # "always empty for MMS" (v2.2)
        await asyncio.sleep(self.dlr_delay_s)
        await self._post_dlr(url, mdr_id, dlr_payload(mdr_id, level=1, status="smsc submit", code=None,
                                                     description="Message has been sent", body=body))
        status, code, description = DLR_OUTCOMES.get(behaviour, DLR_OUTCOMES["delivered"])
        await asyncio.sleep(self.dlr_delay_s)
        attributes["status"] = status
        await self._post_dlr(url, mdr_id, dlr_payload(mdr_id, level=2, status=status, code=code,
                                                     description=description, body=body))

    async def _post_dlr(self, url: str, mdr_id: str, payload: dict[str, Any]) -> None:
        self.messages[mdr_id]["attributes"]["delivery_receipts"].insert(0, payload["data"]["attributes"])
        status = await self._post_webhook(url, payload)
        self.dlr_posts.append((mdr_id, status))

    # ----- webhooks, lookups, control ------------------------------------------------------------
    async def _post_webhook(self, url: str, payload: dict[str, Any], resends: int = 4) -> int:
        """POST like Flowroute: anything but 200 is resent, `resends` more times."""
        assert self._session is not None
        status = 0
        for attempt in range(resends + 1):
            try:
                async with self._session.post(url, json=payload) as response:
                    status = response.status
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                break
            if attempt < resends:
                await asyncio.sleep(self.webhook_resend_interval_s)
        return status

    async def inject_inbound(self, webhook_url: str, *, sender: str, did: str, body: str | None,
                             media: list[dict[str, Any]] | None = None, shape: str = "jsonapi",
                             resends: int = 0) -> tuple[str, int]:
        """Post an inbound SMS/MMS to a webhook; returns (mdr id, final HTTP status)."""
        payload = inbound_payload(sender=sender, did=did, body=body, media=media, shape=shape)
        mdr_id = payload["data"]["id"] if "data" in payload else payload["id"]
        # Flowroute lists inbound messages too (its advice for recovering missed webhooks).
        record = payload if shape == "jsonapi" else inbound_payload(sender=sender, did=did, body=body, mdr_id=mdr_id)
        self.messages[mdr_id] = record["data"]
        return mdr_id, await self._post_webhook(webhook_url, payload, resends=resends)

    async def _inject_view(self, request: web.Request) -> web.Response:
        spec = await request.json()
        mdr_id, status = await self.inject_inbound(
            spec["webhook_url"], sender=spec["from"], did=spec["to"], body=spec.get("body"),
            media=spec.get("media"), shape=spec.get("shape", "jsonapi"))
        return web.json_response({"mdr_id": mdr_id, "webhook_status": status})

    async def _faults_view(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.faults = Faults(**{k: v for k, v in spec.items() if k in Faults.__dataclass_fields__})
        return web.json_response({"faults": self.faults.__dict__})

    async def _stats_view(self, request: web.Request) -> web.Response:
        per_account = {key: {"attempts": len(a.attempts), "max_in_window": self.max_in_window(key)}
                       for key, a in self.accounts.items()}
        counts: dict[int, int] = defaultdict(int)
        for status in self.statuses():
            counts[status] += 1
        return web.json_response({"accounts": per_account, "statuses": counts, "messages": len(self.messages)})

    async def _lookup(self, request: web.Request) -> web.Response:
        if self._authenticate(request) is None:
            return _error(401, "Unauthorized", "Authentication failed.")
        record = self.messages.get(request.match_info["mdr_id"])
        if record is None:
            return _error(404, "Not Found", "Could not find that resource on your account.")
        return _json({"data": record})

    async def _list(self, request: web.Request) -> web.Response:
        if self._authenticate(request) is None:
            return _error(401, "Unauthorized", "Authentication failed.")
        self.list_reads.append(time.monotonic())
        try:
            query = list_query(request.query)
        except BadQuery as exc:
            return _error(400, "Bad Request", exc.reason)
        rows = [m for m in self.messages.values() if query.takes(parse_timestamp(m["attributes"]["timestamp"]))]
        end = query.offset + query.limit
        links = {"next": str(request.url.update_query(offset=end))} if end < len(rows) else {}
        return _json({"data": rows[query.offset:end], "links": links})


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), status=status, content_type=CONTENT_TYPE)


def _error(status: int, title: str, detail: str) -> web.Response:
    return _json(error_body(status, title, detail), status)


def _is_mms(attributes: dict[str, Any]) -> bool:
    """One rule for the limiter and the MDR: media, or `is_mms` true (a boolean or "true")."""
    return bool(attributes.get("media_urls")) or str(attributes.get("is_mms")).lower() == "true"


def _attributes(raw: bytes) -> dict[str, Any] | None:
    """The message attributes from a JSON:API or a compact body; None when unreadable."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc = doc["data"].get("attributes")
    return doc if isinstance(doc, dict) else None


def _plus(number: str) -> str:
    return number if number.startswith("+") else f"+{number}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
