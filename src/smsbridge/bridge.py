"""Wiring: one `Bridge` runs any set of roles in one process, sharing nothing in memory.

Start order: connect, declare topology, open the publisher, then consumers, then the receiver
(intake last, so nothing is accepted before it can be stored). Stop order is the reverse:
stop intake (receiver, then consumer subscriptions), drain in-flight work within the timeout,
cancel the rest (unacked, so the broker redelivers), close adapters, channels, connection.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Iterable
from datetime import timedelta
from typing import Any

import aiohttp
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from smsbridge.app_keys import LEDGER_USABLE
from smsbridge.broker import names, topology
from smsbridge.broker.consumer import StageConsumer
from smsbridge.broker.publisher import Publisher
from smsbridge.config import AmqpTarget, HttpTarget, LedgerSettings, RetryPolicy, Settings
from smsbridge.connection import connect, failover
from smsbridge.events import (
    delivery_stage_decoder,
    dispatch_stage_decoder,
    inbound_stage_decoder,
    outbound_stage_decoder,
)
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.ledger import Ledger, open_from_settings
from smsbridge.ledger.schema import LATEST
from smsbridge.metrics import Metrics
from smsbridge.pbx.amqp import AmqpAdapter
from smsbridge.pbx.base import DeliveryAdapter
from smsbridge.pbx.http import HttpAdapter
from smsbridge.receiver import make_app, make_health_app
from smsbridge.workers.delivery import DeliveryHandler
from smsbridge.workers.dispatcher import DispatchHandler, conversation_of, limiters_for
from smsbridge.workers.inbound import InboundHandler
from smsbridge.workers.outbound import OutboundHandler

ROLES = ("receiver", "inbound", "delivery", "outbound", "dispatcher")
BROKER_STEP_TIMEOUT_S = 5.0
log = structlog.get_logger("smsbridge.bridge")


class Bridge:
    def __init__(self, settings: Settings, roles: Iterable[str] = ROLES, metrics: Metrics | None = None) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s): {', '.join(sorted(unknown))}; known: {', '.join(ROLES)}")
        self.settings = settings
        self.roles = tuple(r for r in ROLES if r in set(roles))
        self.metrics = metrics or Metrics()
        self.connection: AbstractRobustConnection | None = None
        self.publisher: Publisher | None = None
        self.receiver_url: str | None = None
        self._channels: list[AbstractChannel] = []
        self._consumers: list[StageConsumer[Any]] = []
        self._adapters: dict[str, DeliveryAdapter] = {}
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._declared = False
        self.ledger: Ledger | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._failover: asyncio.Task[None] | None = None
        self.health_url: str | None = None

    def readiness(self) -> dict[str, bool]:
        conn = self.connection
        connected = conn is not None and not conn.is_closed and conn.connected.is_set()
        ledger_usable = self.ledger is not None and self.ledger.usable
        return {"broker_connected": connected, "topology_declared": self._declared, LEDGER_USABLE: ledger_usable}

    async def start(self, *, connect_attempts: int | None = None) -> None:
        broker = self.settings.broker
        self.ledger = await open_ledger(self.settings.ledger)
        self._pruner = asyncio.create_task(self._prune_forever(), name="ledger-pruner")
        self.connection = await connect(broker.urls, attempts=connect_attempts)
        self._failover = asyncio.create_task(failover(self.connection, broker.urls), name="broker-failover")
        channel = await self._channel(publisher_confirms=True, on_return_raises=True)
        pbx_exchanges = [t.exchange for t in self.settings.pbx_targets if isinstance(t, AmqpTarget)]
        await topology.declare(channel, broker.prefix, delivery_limit=broker.delivery_limit,
                               accounts=self.settings.accounts(), pbx_exchanges=pbx_exchanges)
        self._declared = True
        self.publisher = Publisher(channel, timeout=broker.publish_timeout_s)
        ledger = self.ledger
        if "inbound" in self.roles:
            await self._consume("inbound", inbound_stage_decoder,
                                InboundHandler(self.settings, self.publisher, ledger), order_key=_conversation)
        if "delivery" in self.roles:
            handler = DeliveryHandler(self._build_adapters(), self.metrics, ledger, lease_s=self._delivery_lease_s())
            await self._consume("delivery", delivery_stage_decoder, handler, order_key=_conversation)
        if "outbound" in self.roles:
            await self._consume("outbound", outbound_stage_decoder,
                                OutboundHandler(self.settings, self.publisher, ledger))
        if "dispatcher" in self.roles:
            await self._start_dispatcher()
        if "receiver" in self.roles:
            await self._start_receiver()
        elif self.settings.observability.enabled:
            await self._start_health()
        self._poller = asyncio.create_task(self._poll_queues(), name="queue-depth-poller")
        # Everything built so far (imports, settings, pools) lives as long as the process: move it
        # out of the collector's sight, so full collections walk only what messages allocate.
        gc.collect()
        gc.freeze()
        log.info("bridge started", roles=list(self.roles), prefix=broker.prefix, receiver=self.receiver_url,
                 health=self.health_url)

    async def _channel(self, **kwargs: Any) -> AbstractChannel:
        assert self.connection is not None
        channel = await self.connection.channel(**kwargs)
        self._channels.append(channel)
        return channel

    async def _consume(self, stage: str, decoder: Any, handler: Any, order_key: Any = None,
                       prefetch: int | None = None, policy: RetryPolicy | None = None) -> None:
        assert self.publisher is not None
        channel = await self._channel()
        await channel.set_qos(prefetch_count=prefetch or self.settings.broker.prefetch)
        policy = policy or getattr(self.settings.retry, stage)
        consumer: StageConsumer[Any] = StageConsumer(
            stage=stage, queue_name=names.stage_queue(self.settings.broker.prefix, stage),
            prefix=self.settings.broker.prefix, decoder=decoder, handler=handler, publisher=self.publisher,
            policy=policy, metrics=self.metrics, order_key=order_key,
        )
        await consumer.start(channel)
        self._consumers.append(consumer)

    async def _start_dispatcher(self) -> None:
        """One consumer per account queue (single active consumer), each on its own channel."""
        assert self.publisher is not None and self.connection is not None
        answers = self.metrics.flowroute_answers
        client = FlowrouteClient(self._http_session(), base_url=self.settings.flowroute.api_base,
                                 timeout_s=self.settings.flowroute.timeout_s,
                                 on_answer=lambda account, status: answers.labels(account, str(status)).inc())
        assert self.ledger is not None
        handler = DispatchHandler(self.settings, self.publisher, client, limiters_for(self.settings), self.metrics,
                                  self.ledger)
        self.connection.reconnect_callbacks.add(lambda *_args, **_kw: handler.subscribed())
        for account, config in self.settings.accounts().items():
            # A small prefetch: what is prefetched but unsent is all a dying dispatcher hands over.
            await self._consume(names.dispatch_stage(account), dispatch_stage_decoder, handler,
                                prefetch=2 * config.sms_per_second, policy=self.settings.retry.dispatch,
                                order_key=conversation_of)

    def _delivery_lease_s(self) -> float:
        """Longer than any one delivery attempt can take, so a live claim is never stolen."""
        timeouts = [t.timeout_s for t in self.settings.pbx_targets if isinstance(t, HttpTarget)]
        return 2 * max(timeouts + [self.settings.broker.publish_timeout_s]) + 10

    async def _prune_forever(self) -> None:
        ledger_settings = self.settings.ledger
        while True:
            try:
                assert self.ledger is not None
                removed = await self.ledger.prune(timedelta(days=ledger_settings.retention_days))
                if removed:
                    log.info("ledger pruned", removed=removed, retention_days=ledger_settings.retention_days)
            except SQLAlchemyError as exc:
                log.error("ledger prune failed", error=repr(exc))
            await asyncio.sleep(ledger_settings.prune_interval_s)

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    def _build_adapters(self) -> dict[str, DeliveryAdapter]:
        assert self.publisher is not None
        for target in self.settings.pbx_targets:
            if isinstance(target, HttpTarget):
                self._adapters[target.tenant] = HttpAdapter(target, self._http_session())
            else:
                self._adapters[target.tenant] = AmqpAdapter(target, self.publisher)
        return self._adapters

    async def _start_health(self) -> None:
        """Worker-only processes: /healthz, /readyz and /metrics on their own small port."""
        self._runner = web.AppRunner(make_health_app(self.metrics, self.readiness), access_log=None)
        await self._runner.setup()
        observability = self.settings.observability
        await web.TCPSite(self._runner, observability.host, observability.port).start()
        host, port = self._runner.addresses[0][:2]
        self.health_url = f"http://{host}:{port}"

    def _queues(self) -> list[str]:
        prefix = self.settings.broker.prefix
        stages = [*topology.STAGES, *(names.dispatch_stage(a) for a in self.settings.accounts())]
        return [names.stage_queue(prefix, s) for s in stages] + [names.dead_queue(prefix), names.unrouted_queue(prefix)]

    async def _poll_queues(self) -> None:
        """Queue depths for the gauges; a failed poll leaves the last values and tries again."""
        channel = None
        while True:
            try:
                if channel is None or channel.is_closed:
                    assert self.connection is not None
                    channel = await (await self.connection.channel()).get_underlay_channel()
                for queue in self._queues():
                    declared = await channel.queue_declare(queue, passive=True)
                    self.metrics.queue_depth.labels(queue).set(declared.message_count or 0)
            except Exception as exc:  # a missing queue closes the channel: reopen next round
                log.debug("queue depth poll failed", error=repr(exc))
                channel = None
            await asyncio.sleep(self.settings.observability.queue_poll_s)

    async def _start_receiver(self) -> None:
        assert self.publisher is not None
        assert self.ledger is not None
        app = make_app(self.settings, self.publisher, self.metrics, self.readiness, self.ledger)
        # No access log: the webhook path carries the configuration's secret token.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.drain_timeout_s)
        await self._runner.setup()
        receiver = self.settings.receiver
        await web.TCPSite(self._runner, receiver.host, receiver.port).start()
        host, port = self._runner.addresses[0][:2]
        self.receiver_url = f"http://{host}:{port}"

    def _online(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def stop(self) -> None:
        """Stop in order; every broker call is bounded, so SIGTERM works even while the broker is down."""
        timeout = self.settings.drain_timeout_s
        if self._runner is not None:
            await self._runner.cleanup()  # stops accepting, lets running webhooks finish
            self._runner = None
        # With the broker gone there is nothing to cancel or close politely: unacked messages
        # return to their queues when the connection ends, so skip straight past those steps.
        # Each phase is bounded once for all its steps, not once per step.
        if self._online():
            await _bounded(asyncio.gather(*(c.cancel() for c in self._consumers)), "cancel consumers")
        await asyncio.gather(*(consumer.drain(timeout) for consumer in self._consumers))
        self._consumers.clear()
        for adapter in self._adapters.values():
            await adapter.close()
        if self._http is not None:
            await self._http.close()
        if self._online():
            open_channels = [c for c in self._channels if not c.is_closed]
            await _bounded(asyncio.gather(*(c.close() for c in open_channels)), "close channels")
        self._channels.clear()
        if self.connection is not None:
            await _bounded(self.connection.close(), "close connection")
        for task in (self._pruner, self._poller, self._failover):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.ledger is not None:
            await self.ledger.close()
        log.info("bridge stopped")


async def open_ledger(settings: LedgerSettings) -> Ledger:
    """Open the ledger and bring its schema up to date, or refuse to start saying what to run."""
    ledger = open_from_settings(settings)
    if settings.migrate_on_start:
        applied = await ledger.upgrade()
        if applied:
            log.info("ledger migrated", versions=applied)
    elif (version := await ledger.version()) != LATEST:
        await ledger.close()
        raise RuntimeError(f"ledger schema is at version {version}, this release needs {LATEST}: "
                           "run `smsbridge db upgrade`")
    return ledger


def _conversation(event: Any) -> str | None:
    """Texts between the same two numbers (and extension) are handled in arrival order."""
    return getattr(event, "conversation", None)


async def _bounded(step: Awaitable[Any], what: str, seconds: float = BROKER_STEP_TIMEOUT_S) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except (TimeoutError, Exception) as exc:  # broker gone: unacked messages are redelivered anyway
        log.warning("shutdown step skipped", step=what, error=repr(exc))
