"""The webhook receiver: one URL per SMS configuration, 200 only after the broker confirms.

    POST /webhooks/flowroute/{config_id}/{token}   inbound SMS, MMS and DLRs, both shapes
    GET  /healthz   the process is alive (503 once its ledger can never answer again)
    GET  /readyz    the broker is connected, the topology declared and the ledger usable
    GET  /metrics   Prometheus

Answers: 200 accepted (published) or parked (stored in the dead-letter queue for people to
look at); 400 not JSON, or a field breaks its limit (`limits.py`; the answer names the field);
404 unknown configuration or wrong token (the same answer for both); 408 the body did not
arrive within `receiver.read_timeout_s` (the connection is closed, as it is when the headers
take longer than that); 413 too large; 503 the broker did not confirm (Flowroute resends).
Every error body is JSON `{"error": code, "detail": text}` and never contains a secret.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import structlog
from aiohttp import web

from smsbridge.app_keys import LEDGER, LEDGER_USABLE, METRICS, PUBLISHER, READY, SETTINGS, ReadyCheck
from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings, SmsConfig
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import DeliveryReceipt, InboundMessage, encoder
from smsbridge.flowroute.webhook import UnknownShape
from smsbridge.history_api import add_history_routes
from smsbridge.intake import NotJson, Unroutable, read_webhook
from smsbridge.ledger import Ledger
from smsbridge.limits import FieldRejected
from smsbridge.metrics import Metrics
from smsbridge.redact import clip
from smsbridge.relay_api import add_relay_routes
from smsbridge.secret import Secret

log = structlog.get_logger("smsbridge.receiver")
Where = dict[str, Any]  # the configuration and source address of a request, for its log lines


# Compared against when the configuration id is unknown, so both 404s take the same time.
_DUMMY_TOKEN = Secret("x" * 48)
WEBHOOK_PATH = "/webhooks/flowroute/{config_id}/{token}"


def json_answer(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), status=status, content_type="application/json")


def json_error(status: int, code: str, detail: str) -> web.Response:
    return json_answer({"error": code, "detail": detail}, status)


def make_app(
    settings: Settings, publisher: Publisher, metrics: Metrics, ready: ReadyCheck, ledger: Ledger
) -> web.Application:
    app = web.Application(client_max_size=settings.receiver.max_body_bytes)
    app[SETTINGS] = settings
    app[PUBLISHER] = publisher
    app[LEDGER] = ledger
    app[METRICS] = metrics
    app[READY] = ready
    app.router.add_post(WEBHOOK_PATH, webhook)
    add_health_routes(app)
    add_history_routes(app)
    add_relay_routes(app, settings)
    return app


def make_health_app(metrics: Metrics, ready: ReadyCheck) -> web.Application:
    """For worker-only processes: the same probes and metrics, nothing else."""
    app = web.Application()
    app[METRICS] = metrics
    app[READY] = ready
    add_health_routes(app)
    return app


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)


def _authenticate(settings: Settings, config_id: str, token: str) -> SmsConfig | None:
    config = settings.sms_config(config_id)
    expected = config.webhook_token if config else _DUMMY_TOKEN
    return config if expected.matches(token) and config is not None else None


async def webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    config_id = request.match_info["config_id"]
    config = _authenticate(settings, config_id, request.match_info["token"])
    # Every line about this request says where it came from (passed along: cheaper than a bind).
    where = {"config": config_id, "source_ip": request.remote}
    if config is None:
        log.warning("webhook refused: unknown configuration or wrong token", **where)
        metrics.webhook_result("unknown", 404).inc()
        return json_error(404, "not_found", "no such webhook")
    response = await _accept(request, config, where)
    metrics.webhook_result(config.id, response.status).inc()
    if response.status == 200:  # a JSON body (accepted or parked), read whatever its label said
        metrics.webhook_content_type(config.id, request.headers.get("Content-Type"))
    metrics.webhook_seconds.observe(time.perf_counter() - started)
    return response


async def _accept(request: web.Request, config: SmsConfig, where: Where) -> web.Response:
    settings = request.app[SETTINGS]
    allowed = settings.receiver.allowed_source_ips
    if allowed and request.remote not in allowed:
        log.warning("webhook refused: source address not allowed", **where)
        return json_error(403, "forbidden", "source address not allowed")
    try:
        raw = await _read_body(request, settings.receiver.read_timeout_s)
    except web.HTTPRequestEntityTooLarge:
        log.warning("webhook refused: body too large", **where, limit=settings.receiver.max_body_bytes)
        return json_error(413, "too_large", f"body exceeds {settings.receiver.max_body_bytes} bytes")
    except TimeoutError:
        log.warning("webhook refused: body not received in time", **where, timeout_s=settings.receiver.read_timeout_s)
        response = json_error(408, "timeout", f"body not received within {settings.receiver.read_timeout_s:g} s")
        response.force_close()  # the rest of a stalled body is not waited for
        return response
    try:
        event = read_webhook(raw, config, client_message_id=request.query.get("cmid"))
    except NotJson as exc:
        log.warning("webhook refused: body is not JSON", **where, error=exc.reason)
        return json_error(400, "invalid_json", exc.reason)
    except FieldRejected as exc:
        log.warning("webhook refused: a field breaks its limit", **where, field=exc.field, reason=exc.reason)
        return json_answer({"error": "invalid_field", "field": exc.field, "detail": exc.reason}, 400)
    except UnknownShape as exc:
        return await _park(request, config, raw, exc.reason, "unknown_shape", where)
    except Unroutable as exc:
        return await _park(request, config, raw, exc.reason, exc.code, where)
    # A resend is published like any webhook: the inbound worker recognises it from the ledger.
    # That keeps the receiver's answer independent of the database, and as fast as a publish.
    return await _publish(request, event, where)


async def _read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body within `timeout_s`: a sender that trickles it (or stops) is cut off."""
    async with asyncio.timeout(timeout_s):
        return await request.read()


async def _publish(request: web.Request, event: InboundMessage | DeliveryReceipt,
                   where: Where) -> web.Response:
    settings, publisher = request.app[SETTINGS], request.app[PUBLISHER]
    kind = "dlr" if isinstance(event, DeliveryReceipt) else ("mms" if event.is_mms else "sms")
    ids = {"mdr_id": event.mdr_id, "event_id": event.event_id, "kind": kind}
    try:
        body = encoder.encode(event)
        # Hedged: a Flowroute resend is already a second copy, which the inbound stage drops by its id
        # (a receipt's second copy of the same event forwards its status again, with the same event_id).
        await publisher.to_stage(settings.broker.prefix, "inbound", body, message_id=event.event_id, hedge=True)
    except BrokerUnavailable as exc:
        log.error("webhook not accepted: broker unavailable", **where, error=str(exc), **ids)
        return json_error(503, "unavailable", "could not store the message; please retry")
    log.info("webhook accepted", **where, outcome="published", **ids)
    return json_answer({"status": "accepted", "event_id": event.event_id})


async def _park(request: web.Request, config: SmsConfig, raw: bytes, reason: str, code: str,
                where: Where) -> web.Response:
    """Valid JSON we cannot process: keep it in the dead-letter queue, say so, answer 200."""
    settings, publisher, metrics = request.app[SETTINGS], request.app[PUBLISHER], request.app[METRICS]
    extra: dict[str, Any] = {names.H_CONFIG: config.id, names.H_ROUTING_KEY: "receiver"}
    try:
        await publisher.park(settings.broker.prefix, "receiver", raw, reason=reason, code=code, extra=extra)
    except BrokerUnavailable as exc:
        log.error("webhook not accepted: broker unavailable while parking", **where, error=str(exc), reason=reason)
        return json_error(503, "unavailable", "could not store the message; please retry")
    metrics.parked.labels(config.id, code).inc()
    log.warning("webhook parked in the dead-letter queue", **where, outcome="parked", reason=reason, reason_code=code)
    return json_answer({"status": "parked", "reason": clip(reason)})


async def healthz(request: web.Request) -> web.Response:
    """Alive, unless the ledger can never answer again: then a liveness probe should restart us
    (a broker outage is not a reason: the process reconnects by itself)."""
    if not request.app[READY]().get(LEDGER_USABLE, True):
        return web.json_response({"status": "ledger_stopped"}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READY]()
    ok = all(checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


async def metrics_view(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8")
