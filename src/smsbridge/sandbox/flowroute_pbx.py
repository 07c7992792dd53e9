"""A demo PBX that speaks only Flowroute, as PortSIP, FreePBX SMS Connector and FusionPBX do.

- Its webhook takes what Flowroute posts and reads it the way FreePBX's and FusionPBX's
  Flowroute hooks do (`data.type`, `data.id`, `data.attributes.{to,from,body}`,
  `included[].attributes.{url,file_name}`), refusing anything they could not read. Texts are
  kept once per `data.id` (the PBX's dedupe key); delivery receipts are kept apart.
- It sends the way those PBXs send: `send_flat` is FusionPBX (`{"to","from","body"}` to
  `<api>/v2/messages`, Basic auth, `Content-Type: application/json`), `send_jsonapi` is FreePBX
  SMS Connector (v2.2 JSON:API, numbers with `+`, `is_mms` as the string "true").
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

log = structlog.get_logger("smsbridge.sandbox.flowroute_pbx")


def shape_problem(doc: Any) -> str | None:
    """Why FreePBX's or FusionPBX's Flowroute hook could not read this body, or None."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return "no data object with a string id"
    if data.get("type") == "delivery_receipt":
        attributes = data.get("attributes")
        return None if isinstance(attributes, dict) and "status" in attributes else "receipt without status"
    attributes = data.get("attributes")
    if data.get("type") != "message" or not isinstance(attributes, dict):
        return "data.type is not message or attributes are missing"
    for key in ("to", "from"):
        value = attributes.get(key)
        if not isinstance(value, str) or not value.isdigit() or len(value) != 11:
            return f"data.attributes.{key} is not 11 digits"
    if attributes.get("direction") != "inbound" or not isinstance(attributes.get("body"), str | None):
        return "not an inbound text"
    return _media_problem(doc, attributes)


def _media_problem(doc: dict[str, Any], attributes: dict[str, Any]) -> str | None:
    included = doc.get("included", [])
    if not isinstance(included, list):
        return "included is not a list"
    for item in included:
        media = item.get("attributes") if isinstance(item, dict) else None
        if not isinstance(media, dict) or not str(media.get("url", "")).startswith(("http://", "https://")):
            return "included[].attributes.url missing"
        if not isinstance(media.get("file_name"), str):
            return "included[].attributes.file_name missing"
    if included and attributes.get("is_mms") is not True:
        return "media without is_mms"
    return None


class FlowroutePbx:
    def __init__(self, *, path: str = "/flowroute/webhook", dlr_path: str = "/flowroute/dlr") -> None:
        self._path = path
        self._dlr_path = dlr_path
        self.texts: dict[str, dict[str, Any]] = {}  # by data.id
        self.posts = 0
        self.refused: list[str] = []
        self.receipts: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base = ""

    @property
    def webhook_url(self) -> str:
        return self.base + self._path

    @property
    def dlr_url(self) -> str:
        return self.base + self._dlr_path

    async def _hook(self, request: web.Request) -> web.Response:
        # FusionPBX's hook accepts exactly this content type and nothing else.
        if request.headers.get("Content-Type") != "application/json":
            return await self._refuse(f"content type {request.headers.get('Content-Type')!r}")
        try:
            doc = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return await self._refuse("not JSON")
        problem = shape_problem(doc)
        if problem is not None:
            return await self._refuse(problem)
        await self._keep(doc)
        return web.Response(status=202)  # as FreePBX SMS Connector answers

    async def _refuse(self, why: str) -> web.Response:
        async with self._changed:
            self.refused.append(why)
            self._changed.notify_all()
        log.warning("Flowroute PBX refused a webhook", why=why)
        return web.json_response({"error": why}, status=400)

    async def _keep(self, doc: dict[str, Any]) -> None:
        data = doc["data"]
        async with self._changed:
            self.posts += 1
            if data["type"] == "delivery_receipt":
                self.receipts.append(doc)
                log.info("Flowroute PBX got a delivery receipt", id=data["id"], status=data["attributes"]["status"])
            elif data["id"] not in self.texts:
                self.texts[data["id"]] = doc
                attributes = data["attributes"]
                log.info("Flowroute PBX got a text", id=data["id"], from_=attributes["from"],
                         to=attributes["to"], body=attributes["body"], media=len(doc.get("included", [])))
            self._changed.notify_all()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post(self._path, self._hook)
        app.router.add_post(self._dlr_path, self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.webhook_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_texts(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.texts) >= count), timeout)
        return list(self.texts.values())

    async def wait_receipts(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.receipts) >= count), timeout)
        return list(self.receipts)


async def send_flat(session: aiohttp.ClientSession, api_base: str, auth: tuple[str, str], *, to: str,
                    from_: str, body: str) -> tuple[int, Any]:
    """What FusionPBX's SMS app sends to its `flowroute_api_url` (`<api_base>/v2/messages`)."""
    payload = msgspec.json.encode({"to": to, "from": from_, "body": body})
    return await _post(session, f"{api_base}/v2/messages", auth, payload, "application/json", {})


async def send_jsonapi(session: aiohttp.ClientSession, api_base: str, auth: tuple[str, str], *, to: str,
                       from_: str, body: str | None, media_urls: list[str] | None = None,
                       dlr_callback: str | None = None, headers: dict[str, str] | None = None,
                       version: str = "v2.2") -> tuple[int, Any]:
    """What FreePBX SMS Connector sends (`+` numbers; MMS with `is_mms: "true"` and `media_urls`)."""
    attributes: dict[str, Any] = {"to": f"+{to.lstrip('+')}", "from": f"+{from_.lstrip('+')}"}
    if body is not None:
        attributes["body"] = body
    if media_urls:
        attributes.update(is_mms="true", media_urls=media_urls)
    if dlr_callback:
        attributes["dlr_callback"] = dlr_callback
    payload = msgspec.json.encode({"data": {"type": "message", "attributes": attributes}})
    return await _post(session, f"{api_base}/{version}/messages", auth, payload, "application/vnd.api+json",
                       headers or {})


async def _post(session: aiohttp.ClientSession, url: str, auth: tuple[str, str], payload: bytes,
                content_type: str, headers: dict[str, str]) -> tuple[int, Any]:
    basic = aiohttp.encode_basic_auth(*auth)
    async with session.post(url, data=payload,
                            headers={"Content-Type": content_type, "Authorization": basic, **headers}) as response:
        raw = await response.read()
        try:
            return response.status, msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return response.status, raw.decode(errors="replace")
