"""`GET /v1/messages` and `GET /v1/messages/{id}`: "did my text go out?" for support staff.

Behind `Authorization: Bearer <admin token>` (`[admin] token`); without a configured token the
routes answer 404, as if they did not exist. Filters: tenant, number (E.164, from or to),
state, since, until (ISO 8601), limit; page with `before` = the `next_before` of the last page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from smsbridge.app_keys import LEDGER, SETTINGS
from smsbridge.ledger import MessageRow


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def _authorised(request: web.Request) -> web.Response | None:
    token = request.app[SETTINGS].admin.token
    if token is None:
        return _error(404, "not_found", "the history API is off: set [admin] token")
    offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not token.matches(offered):
        return _error(401, "unauthorized", "a valid admin token is required")
    return None


def _json(payload: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), content_type="application/json")


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise web.HTTPBadRequest(text=msgspec.json.encode(
            {"error": "bad_request", "detail": f"{name} must be an ISO 8601 time"}).decode(),
            content_type="application/json") from None


def _int(value: str | None, name: str, default: int | None) -> int | None:
    if value is None:
        return default
    if not value.isdigit():
        raise web.HTTPBadRequest(text=msgspec.json.encode(
            {"error": "bad_request", "detail": f"{name} must be a whole number"}).decode(),
            content_type="application/json")
    return int(value)


async def list_messages(request: web.Request) -> web.Response:
    if (refused := _authorised(request)) is not None:
        return refused
    q = request.query
    limit = _int(q.get("limit"), "limit", 50) or 50
    rows: list[MessageRow] = await request.app[LEDGER].search(
        tenant=q.get("tenant"), number=q.get("number"), state=q.get("state"), since=_time(q.get("since"), "since"),
        until=_time(q.get("until"), "until"), limit=limit, before_id=_int(q.get("before"), "before", None))
    next_before = rows[-1].id if len(rows) == limit else None
    return _json({"messages": rows, "next_before": next_before})


async def one_message(request: web.Request) -> web.Response:
    if (refused := _authorised(request)) is not None:
        return refused
    ledger = request.app[LEDGER]
    row = await ledger.find(request.match_info["ref"], tenant=request.query.get("tenant"))
    if row is None:
        return _error(404, "not_found", "no such message (it may have been pruned)")
    detail: dict[str, Any] = {"message": row, "history": await ledger.history(row.id)}
    if row.direction == "inbound" and row.mdr_id:  # where it stands for each extension
        detail["deliveries"] = await ledger.deliveries(row.config_id, row.mdr_id)
    return _json(detail)


def add_history_routes(app: web.Application) -> None:
    app.router.add_get("/v1/messages", list_messages)
    app.router.add_get("/v1/messages/{ref}", one_message)
