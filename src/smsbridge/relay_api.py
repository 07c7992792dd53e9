"""The Flowroute-compatible send API, served by the receiver under `[relay] path_prefix`.

    POST {prefix}/v2/messages     compact `{"to","from","body"}` (FusionPBX's `flowroute_api_url`)
    POST {prefix}/v2.1/messages   compact or JSON:API, SMS and MMS, `dlr_callback`
    POST {prefix}/v2.2/messages   the same (FreePBX SMS Connector, PortSIP's custom URL)
    GET  {prefix}/v2.2/messages/{id}   (and v2.1) the message in Flowroute's MDR shape, current state

Basic auth with the credentials the bridge issued (`[[relay_clients]]`). A send is answered
`202 {"data":{"id":"mdr2-…"}}` (the bridge's own id) only once RabbitMQ has confirmed the
request; 503 when it did not; 400/401/403/413/422 in Flowroute's `errors[]` shape. The same
`Idempotency-Key` within `[relay] idempotency_window_s` gets the first answer and sends nothing;
a retry of a keyed send whose publish was never confirmed (503, or a process that died before
marking it) publishes the same request again under the first id: the dispatcher's dedupe by
`client_message_id` makes a copy the broker had stored after all no second text
(`ledger/relay_ops.py` has the states). With `[relay] id_key` set, a send without a key is
answered once RabbitMQ confirms it and nothing more: the outbound stage writes its row
(`relay_origin.py`), and its id, signed for the tenant (`relay_ids.py`), is looked up as `queued`
until then, for as long as the outbound stage may still take it (`_may_still_come`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

import msgspec
import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from smsbridge.app_keys import LEDGER, PUBLISHER, SETTINGS
from smsbridge.broker import names
from smsbridge.broker.publisher import now_ms
from smsbridge.config import RelayClient, Settings
from smsbridge.errors import BrokerUnavailable, LedgerUnavailable
from smsbridge.events import OutboundRequest, RelayOrigin, encoder, utcnow
from smsbridge.flowroute.payloads import timestamp
from smsbridge.ledger import MessageRow, RelaySend, Retaken, StatusRow
from smsbridge.relay_ids import SHAPE, issued_at, new_id
from smsbridge.relay_request import RelayError, authenticate, error_doc, idempotency_key, parse_send, to_outbound

log = structlog.get_logger("smsbridge.relay")
CONTENT_TYPE = "application/vnd.api+json"
LEDGER_ERRORS = (LedgerUnavailable, SQLAlchemyError, RuntimeError, OSError)
UNRECORDED_MARGIN_S = 3600.0  # an id's issue time is its hour: up to an hour early
# Flowroute's MDR `status` wording for each of our states.
MDR_STATUS = {"queued": "queued", "accepted": "accepted", "sent": "smsc submit", "buffered": "message buffered",
              "delivered": "delivered", "failed": "delivery failed"}


def _answer(doc: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=msgspec.json.encode(doc), status=status, content_type=CONTENT_TYPE)


def _refusal(exc: RelayError) -> web.Response:
    return _answer(error_doc(exc.status, exc.detail), exc.status)


def message_link(settings: Settings, message_id: str) -> str:
    return f"{settings.receiver.public_url.rstrip('/')}{settings.relay.path_prefix}/v2.2/messages/{message_id}"


def accepted_doc(settings: Settings, message_id: str) -> dict[str, Any]:
    return {"data": {"type": "message", "id": message_id, "links": {"self": message_link(settings, message_id)}}}


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].receiver.max_body_bytes
        raise RelayError(413, f"the body exceeds {limit} bytes") from None


async def send(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        client = authenticate(settings, request.headers.get("Authorization"))
        raw = await _read(request)
        key = idempotency_key(request.headers.get("Idempotency-Key"))
        attributes = parse_send(raw, settings.relay.max_body_chars)
        message_id = new_id(settings.relay.id_key, client.tenant)
        signed = key is None and settings.relay.id_key is not None  # the outbound stage writes its row
        origin = (RelayOrigin(access_key=client.access_key, dlr_callback=attributes.dlr_callback,
                              accepted_at=utcnow()) if signed else None)
        outbound = to_outbound(attributes, client, settings, message_id, origin)
    except RelayError as exc:
        log.warning("relay send refused", status=exc.status, detail=exc.detail, source_ip=request.remote)
        return _refusal(exc)
    if signed:
        where = {"tenant": client.tenant, "client": client.access_key, "id": message_id}
        return await _record_beside_publish(request, None, outbound, where)
    # Without a key (and `[relay] id_key` unset) nothing can repeat this send: its row is written
    # once, already "queued" (and removed if the publish fails). With a key, "pending" keeps a
    # concurrent twin from a 202, and a failed publish leaves it "unconfirmed" for the retry to
    # publish again under this id.
    row = RelaySend(bridge_id=outbound.client_message_id, tenant=client.tenant, access_key=client.access_key,
                    idempotency_key=key, request_hash=hashlib.sha256(raw).hexdigest(),
                    state="queued" if key is None else "pending", dlr_callback=attributes.dlr_callback,
                    created_at=utcnow())
    return await _record_and_publish(request, client, row, outbound)


async def _record_and_publish(request: web.Request, client: RelayClient, row: RelaySend,
                              outbound: OutboundRequest) -> web.Response:
    settings, ledger = request.app[SETTINGS], request.app[LEDGER]
    where = {"tenant": client.tenant, "client": client.access_key, "id": row.bridge_id}
    if row.idempotency_key is None:
        return await _record_beside_publish(request, row, outbound, where)
    try:
        earlier = await _claim(request, row)
    except LEDGER_ERRORS as exc:
        log.error("relay send not accepted: ledger unavailable", **where, error=repr(exc))
        return _answer(error_doc(503, "could not store the message; please retry"), 503)
    if isinstance(earlier, Retaken):  # never confirmed: the same request again, under its first id
        row = earlier.send
        outbound = msgspec.structs.replace(outbound, client_message_id=row.bridge_id)
        where["id"] = row.bridge_id
        log.info("relay send retaken: publishing it again under its first id", **where, outcome="retaken")
    elif earlier is not None:
        return _repeat(settings, earlier, row, where)
    try:
        await _publish(request, outbound)
    except BrokerUnavailable as exc:  # it may be stored all the same (a confirm that timed out)
        log.error("relay send not accepted: broker unavailable", **where, error=str(exc))
        await _unconfirmed(request, row.bridge_id)
        return _answer(error_doc(503, "could not store the message; please retry"), 503)
    try:
        await ledger.relay_queued(row.bridge_id)
    except LEDGER_ERRORS as exc:  # it is queued all the same: the answer must say so
        log.error("relay send queued but not marked so in the ledger", **where, error=repr(exc))
    log.info("relay send accepted", **where, outcome="published", idempotency_key=True)
    return _answer(accepted_doc(settings, row.bridge_id), 202)


def _start_claim(request: web.Request, row: RelaySend) -> Awaitable[RelaySend | Retaken | None]:
    """The row asked for now, awaited later; a ledger that refuses at once fails the await."""
    settings = request.app[SETTINGS]
    try:
        return request.app[LEDGER].start_claim_relay(row, window_s=settings.relay.idempotency_window_s,
                                                     stale_s=2 * settings.broker.publish_timeout_s + 5)
    except LEDGER_ERRORS as exc:  # closed, or its thread stopped
        return _raise(exc)


async def _claim(request: web.Request, row: RelaySend) -> RelaySend | Retaken | None:
    return await _start_claim(request, row)


async def _raise(exc: BaseException) -> RelaySend | Retaken | None:
    raise exc


async def _record_beside_publish(request: web.Request, row: RelaySend | None, outbound: OutboundRequest,
                                 where: dict[str, Any]) -> web.Response:
    """Without a key nothing can repeat this send, so its row is written while the broker
    confirms: the client waits for the slower of the two, not for both in turn. The row is asked
    for before the publish and awaited after it, in this task (a task per send cost more).
    `row` None: its id is signed and the outbound stage writes the row (`relay_origin.py`); until
    then a lookup of the id answers `queued` (`lookup`)."""
    recording = _start_claim(request, row) if row is not None else None
    published: BrokerUnavailable | None = None
    try:
        await _publish(request, outbound)
    except BrokerUnavailable as exc:
        published = exc
    except BaseException:
        if recording is not None:
            await asyncio.gather(recording, return_exceptions=True)  # never left unobserved
        raise
    recorded: RelaySend | Retaken | None | BaseException = None
    try:
        recorded = await recording if recording is not None else None
    except LEDGER_ERRORS as exc:
        recorded = exc
    if published is not None:
        log.error("relay send not accepted: broker unavailable", **where, error=str(published))
        if row is not None and not isinstance(recorded, BaseException):
            await _forget(request, row.bridge_id)
        return _answer(error_doc(503, "could not store the message; please retry"), 503)
    if isinstance(recorded, BaseException):  # queued all the same: a 503 would have it sent twice
        log.error("relay send queued without its ledger row: no DLRs or lookup for it", **where, error=repr(recorded))
    log.info("relay send accepted", **where, outcome="published", idempotency_key=False)
    return _answer(accepted_doc(request.app[SETTINGS], outbound.client_message_id), 202)


def _repeat(settings: Settings, earlier: RelaySend, row: RelaySend, where: dict[str, Any]) -> web.Response:
    if earlier.request_hash != row.request_hash:
        return _answer(error_doc(422, "this Idempotency-Key was used for a different request"), 422)
    if earlier.state == "pending":
        return _answer(error_doc(409, "a request with this Idempotency-Key is still being stored; retry"), 409)
    log.info("relay send repeated: answered with the first id, nothing sent", **where, first_id=earlier.bridge_id,
             outcome="duplicate")
    return _answer(accepted_doc(settings, earlier.bridge_id), 202)


async def _publish(request: web.Request, outbound: OutboundRequest) -> None:
    """As a PBX would publish it: the requests exchange, key `outbound.<tenant>`, confirmed."""
    settings, publisher = request.app[SETTINGS], request.app[PUBLISHER]
    prefix = settings.broker.prefix
    headers = {names.H_ATTEMPT: 0, names.H_FIRST_SEEN: now_ms()}
    await publisher.publish(names.requests_exchange(prefix), names.request_routing_key(outbound.tenant),
                            encoder.encode(outbound), headers=headers, message_id=outbound.client_message_id)


async def _unconfirmed(request: web.Request, message_id: str) -> None:
    """Keep the row and its id: the publish may have been stored, and the retry must reuse both."""
    try:
        await request.app[LEDGER].relay_unconfirmed(message_id)
    except LEDGER_ERRORS as exc:  # it stays `pending`: its key answers 409 until stale, then is retaken
        log.error("relay send not marked unconfirmed after a failed publish", id=message_id, error=repr(exc))


async def _forget(request: web.Request, message_id: str) -> None:
    try:
        await request.app[LEDGER].forget_relay(message_id)
    except LEDGER_ERRORS as exc:  # its key then answers 409 until the row is stale: never a lost text
        log.error("relay send row not removed after a failed publish", id=message_id, error=repr(exc))


async def lookup(request: web.Request) -> web.Response:
    settings, ledger = request.app[SETTINGS], request.app[LEDGER]
    try:
        client = authenticate(settings, request.headers.get("Authorization"))
    except RelayError as exc:
        return _refusal(exc)
    message_id = request.match_info["message_id"]
    if not SHAPE.fullmatch(message_id):
        return _answer(error_doc(404, "Could not find that resource on your account."), 404)
    try:
        found = await ledger.relay_send(client.tenant, message_id)
        # Signed for this tenant but no row of its own: a send without a key, its row still to
        # come from the outbound stage (or only its request recorded, by a stage from before
        # `OutboundRequest.relay`).
        signed_at = issued_at(settings.relay.id_keys(), client.tenant, message_id) if found is None else None
        row = await ledger.outbound(client.tenant, message_id) if found is not None or signed_at is not None else None
        history = await ledger.history(row.id) if row else []
    except LEDGER_ERRORS as exc:
        log.error("relay lookup failed: ledger unavailable", error=repr(exc))
        return _answer(error_doc(503, "message history is unavailable; please retry"), 503)
    if found is None and row is None and not _may_still_come(settings, signed_at):
        return _answer(error_doc(404, "Could not find that resource on your account."), 404)
    created_at = found.created_at if found is not None else row.created_at if row is not None else None
    return _answer({"data": mdr_doc(settings, message_id, created_at, row, history)}, 200)


def _may_still_come(settings: Settings, signed_at: datetime | None) -> bool:
    """Whether the row of a send signed at `signed_at` (its hour, rounded down) may still come:
    the outbound stage retries its request for `[retry.outbound] max_age_s`, and the hour's
    rounding is made up by the margin. Past that it was pruned or never recorded: 404."""
    if signed_at is None:
        return False
    return utcnow() - signed_at < timedelta(seconds=settings.retry.outbound.max_age_s + UNRECORDED_MARGIN_S)


def _digits(number: str) -> str:
    return number.removeprefix("+")


def mdr_doc(settings: Settings, message_id: str, created_at: datetime | None, row: MessageRow | None,
            history: list[StatusRow]) -> dict[str, Any]:
    """The message as Flowroute's `GET /v2.2/messages/{id}` shows an MDR, with our current state.
    Before the outbound stage has recorded it, only what its id says: `queued`, no numbers or
    body, and no `timestamp` when no row at all holds it yet."""
    attributes: dict[str, Any] = {"direction": "outbound", "message_type": "longcode", "status": "queued",
                                  "delivery_receipts": []}
    if created_at is not None:
        attributes["timestamp"] = timestamp(created_at)
    if row is not None:
        attributes.update(
            to=_digits(row.to_number), body=row.body, is_mms=row.is_mms,
            message_encoding=0 if row.body.isascii() else 8, status=MDR_STATUS.get(row.state, row.state),
            delivery_receipts=[_receipt(h) for h in reversed(history) if h.dlr_level is not None],
            **{"from": _digits(row.from_number)})
    return {"id": message_id, "type": "message", "attributes": attributes,
            "links": {"self": message_link(settings, message_id)}}


def _receipt(h: StatusRow) -> dict[str, Any]:
    return {"level": h.dlr_level, "status": MDR_STATUS.get(h.state, h.state), "status_code": h.dlr_code,
            "status_code_description": h.reason or "", "timestamp": timestamp(h.at)}


def add_relay_routes(app: web.Application, settings: Settings) -> None:
    """Mounted only when relay clients are configured: otherwise these paths do not exist."""
    if not settings.relay_clients:
        return
    prefix = settings.relay.path_prefix
    for version in ("v2", "v2.1", "v2.2"):
        app.router.add_post(f"{prefix}/{version}/messages", send)
    for version in ("v2.1", "v2.2"):
        app.router.add_get(f"{prefix}/{version}/messages/{{message_id}}", lookup)
