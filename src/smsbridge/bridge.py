"""Wiring: one `Bridge` runs any set of roles in one process, sharing nothing in memory.

Start order: open the ledger, connect, declare topology, open the publisher, then consumers, then
the receiver (intake last, so nothing is accepted before it can be stored). Each step that needs
undoing pushes its undo onto one `AsyncExitStack`, so stop is exactly the reverse of start, and a
start that fails half-way undoes what it did: stop intake (receiver, then consumer subscriptions),
drain in-flight work within the timeout, cancel the rest (unacked, so the broker redelivers),
close adapters, channels, the connection, the ledger.
"""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiohttp import web

from smsbridge.app_keys import LEDGER_USABLE
from smsbridge.broker import flows, names, topology
from smsbridge.broker.consumer import StageConsumer
from smsbridge.broker.handback import HandBack
from smsbridge.broker.liveness import BrokerLiveness
from smsbridge.broker.publisher import Publisher
from smsbridge.broker.renewal import Renewal
from smsbridge.broker.routes import Route
from smsbridge.config import (
    AmqpTarget,
    EmailTarget,
    FlowrouteTarget,
    HttpTarget,
    LedgerSettings,
    PbxTarget,
    RetryPolicy,
    Settings,
    SipTarget,
)
from smsbridge.connection import connect, failover, rotated
from smsbridge.destinations import guarded_session
from smsbridge.errors import LedgerUnavailable
from smsbridge.events import (
    delivery_stage_decoder,
    dispatch_stage_decoder,
    inbound_stage_decoder,
    outbound_stage_decoder,
)
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.ledger import Ledger, open_from_settings
from smsbridge.ledger.schema import LATEST
from smsbridge.ledger_pruner import prune_forever
from smsbridge.media.fetch import MediaFetcher
from smsbridge.media.inbound import InboundMedia
from smsbridge.media.outbound import OutboundMedia
from smsbridge.media.serve import add_media_routes
from smsbridge.media.setup import open_store
from smsbridge.media.store import MediaStore
from smsbridge.media.upload import add_upload_route
from smsbridge.metrics import Metrics
from smsbridge.pbx.amqp import AmqpAdapter
from smsbridge.pbx.base import DeliveryAdapter
from smsbridge.pbx.email import EmailAdapter, fetch_networks
from smsbridge.pbx.flowroute import FlowrouteAdapter
from smsbridge.pbx.http import HttpAdapter
from smsbridge.pbx.sip import SipAdapter
from smsbridge.queue_depths import QueueDepthPoller
from smsbridge.receiver import make_app, make_health_app
from smsbridge.sip.server import SipIntake
from smsbridge.targets import adapter_key, delivery_lease_s
from smsbridge.workers import relay_dlr
from smsbridge.workers.delivery import DeliveryHandler
from smsbridge.workers.dispatcher import DispatchHandler, conversation_of, limiters_for
from smsbridge.workers.fallback import Fallback
from smsbridge.workers.inbound import InboundHandler
from smsbridge.workers.outbound import OutboundHandler
from smsbridge.workers.status import AFTER_SEND_CONFIRM_S
from smsbridge.workers.turns import OrderSweeper, Turns, stale_after

ROLES = ("receiver", "inbound", "delivery", "outbound", "dispatcher", "sip")
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
        self.connection: RobustConnection | None = None  # consumers, topology, the first route
        self.standby: RobustConnection | None = None  # with several nodes: the second route
        self.publisher: Publisher | None = None
        self.receiver_url: str | None = None
        self._channels: list[AbstractChannel] = []
        self._consumers: list[StageConsumer[Any]] = []
        self._adapters: dict[str, DeliveryAdapter] = {}
        self._http: aiohttp.ClientSession | None = None
        self._media_http: aiohttp.ClientSession | None = None
        self._declared = False
        self.ledger: Ledger | None = None
        self.liveness: BrokerLiveness | None = None
        self.media_store: MediaStore | None = None
        self.health_url: str | None = None
        self.sip_intake: SipIntake | None = None
        self._stack = AsyncExitStack()

    def readiness(self) -> dict[str, bool]:
        # Connected if either connection is: with the standby up, webhooks are still taken.
        connected = any(c is not None and not c.is_closed and c.connected.is_set()
                        for c in (self.connection, self.standby))
        ledger_usable = self.ledger is not None and self.ledger.usable
        answering = self.liveness is not None and self.liveness.committing()
        return {"broker_connected": connected, "broker_answering": answering, "topology_declared": self._declared,
                LEDGER_USABLE: ledger_usable}

    async def start(self, *, connect_attempts: int | None = None) -> None:
        try:
            await self._start(connect_attempts)
        except BaseException:
            await self.stop()  # undo whatever had started
            raise
        log.info("bridge started", roles=list(self.roles), prefix=self.settings.broker.prefix,
                 receiver=self.receiver_url, health=self.health_url)

    async def _start(self, connect_attempts: int | None) -> None:
        broker, stack = self.settings.broker, self._stack
        self.ledger = ledger = await open_ledger(self.settings.ledger)
        stack.push_async_callback(ledger.close)
        self.media_store = await open_store(self.settings.media)
        if self.media_store is not None:
            stack.push_async_callback(self.media_store.close)
        self._background(prune_forever(ledger, self.settings.ledger, self.media_store), "ledger-pruner")
        self.connection = connection = await self._connect(broker.urls, connect_attempts, "smsbridge")
        if len(broker.urls) > 1:  # a second connection, to another node: the publisher's second route
            self.standby = await self._connect(rotated(broker.urls, 1), connect_attempts, "smsbridge-standby")
            standby = self.standby
            self._background(failover(standby, broker.urls, avoid=lambda: str(connection.url)), "standby-failover")
        self._background(failover(connection, broker.urls, avoid=self._standby_url), "broker-failover")
        stack.push_async_callback(self._close_channels)
        channel = await self._channel(publisher_confirms=True, on_return_raises=True)
        pbx_exchanges = [t.exchange for t in self.settings.pbx_targets if isinstance(t, AmqpTarget)]
        await topology.declare(channel, broker.prefix, delivery_limit=broker.delivery_limit,
                               accounts=self.settings.accounts(), pbx_exchanges=pbx_exchanges,
                               placement=topology.placement_of(broker))
        if self.settings.relay_clients:
            await relay_dlr.declare(channel, self.settings)
        self._declared = True
        # The publisher has channels of its own: a route whose channel the broker nacks gets a
        # fresh one (broker/renewal.py), while this one keeps the topology for aio-pika to restore.
        first = await self._channel(publisher_confirms=True, on_return_raises=True)
        self.publisher = Publisher(first, timeout=broker.publish_timeout_s, connected=connection.connected.is_set)
        self._renewed(self.publisher.routes[-1], connection)
        if self.standby is not None:
            second = await self._channel(publisher_confirms=True, on_return_raises=True, on=self.standby)
            self.publisher.add_route(second, connected=self.standby.connected.is_set, name="standby")
            self._renewed(self.publisher.routes[-1], self.standby)
        self.publisher.warmup.on_copy = lambda route: self.metrics.warmup_copies.labels(route=route).inc()
        stack.push_async_callback(self.publisher.close)  # runs before the channels close
        self.publisher.flows.watch(flows.essential(broker.prefix, self.roles, self.settings.accounts()))
        self.liveness = BrokerLiveness(self.publisher, broker.prefix)
        self.publisher.gate = self.liveness.responsive  # refuse at once while the broker does not answer
        self._background(self.liveness.run(), "broker-liveness")
        await self._start_consumers(ledger)
        stack.push_async_callback(self._stop_consumers)
        if "sip" in self.roles:
            await self._start_sip_intake(ledger)
        if "receiver" in self.roles:
            await self._start_receiver()
        elif self.settings.observability.enabled:
            await self._start_health()
        poller = QueueDepthPoller(self.connection, self._queues, self.metrics,
                                  self.settings.observability.queue_poll_s)
        self._background(poller.run(), "queue-depth-poller")
        # Everything built so far (imports, settings, pools) lives as long as the process: move it
        # out of the collector's sight, so full collections walk only what messages allocate.
        gc.collect()
        gc.freeze()

    async def _start_consumers(self, ledger: Ledger) -> None:
        assert self.publisher is not None
        if "inbound" in self.roles:
            media = self._inbound_media(ledger)
            inbound = InboundHandler(self.settings, self.publisher, ledger, self.metrics, media, self._hand_back())
            # Held in place while the ledger is away: a text sent round a delay queue would let the
            # later texts of its conversation be recorded, and delivered, before it.
            await self._consume("inbound", inbound_stage_decoder, inbound, order_key=_conversation,
                                hold_on=(LedgerUnavailable,))
        if "delivery" in self.roles:
            turns, lease_s = Turns(self.publisher, self.settings.broker.prefix), delivery_lease_s(self.settings)
            handler = DeliveryHandler(self._build_adapters(), self.metrics, ledger, lease_s=lease_s, turns=turns,
                                      fallback=Fallback(self.settings, self.publisher))
            sweeper = OrderSweeper(ledger, turns, stale_after(self.settings.retry.delivery.max_delay_s, lease_s))
            self._background(sweeper.run(), "delivery-order-sweep")
            await self._consume("delivery", delivery_stage_decoder, handler, order_key=_conversation)
            if self.settings.relay_clients:  # receipts for relayed sends go back over HTTP, like deliveries
                receipts = relay_dlr.RelayDlrHandler(self.settings, ledger, self._http_session())
                self._stack.push_async_callback(receipts.close)
                await self._consume(relay_dlr.STAGE, relay_dlr.status_decoder, receipts,
                                    policy=self.settings.retry.delivery)
        if "outbound" in self.roles:
            outbound = OutboundHandler(self.settings, self.publisher, ledger, self._outbound_media(ledger))
            await self._consume("outbound", outbound_stage_decoder, outbound)
        if "dispatcher" in self.roles:
            await self._start_dispatcher()

    async def _connect(self, urls: list[str], attempts: int | None, name: str) -> RobustConnection:
        connection = await connect(urls, attempts=attempts, name=name)
        # Closed even while the broker is down: it would keep reconnecting.
        self._stack.push_async_callback(lambda: _bounded(connection.close(), f"close connection {name}"))
        return connection

    def _standby_url(self) -> str | None:
        return None if self.standby is None else str(self.standby.url)

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A task that lives as long as the bridge: cancelled and awaited on stop."""
        task = asyncio.create_task(work, name=name)

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self._stack.push_async_callback(cancel)

    async def _channel(self, *, on: AbstractRobustConnection | None = None, **kwargs: Any) -> AbstractChannel:
        connection = on or self.connection
        assert connection is not None
        channel = await connection.channel(**kwargs)
        self._channels.append(channel)
        return channel

    def _renewed(self, route: Route, connection: AbstractRobustConnection) -> None:
        """A fresh channel on `connection` for `route` whenever the broker nacks a publish on it."""
        # A retired channel stays open while the longest publish still waiting on it may get its
        # confirm: a status after a send waits up to AFTER_SEND_CONFIRM_S, and one failed by an
        # early close would be published again (a duplicate status).
        grace_s = max(self.settings.broker.publish_timeout_s, AFTER_SEND_CONFIRM_S) + 1.0
        renewal = Renewal(route, lambda: self._channel(publisher_confirms=True, on_return_raises=True, on=connection),
                          grace_s=grace_s, retired=self._channels.remove)
        self._stack.push_async_callback(renewal.close)

    async def _consume(self, stage: str, decoder: Any, handler: Any, order_key: Any = None,
                       prefetch: int | None = None, policy: RetryPolicy | None = None,
                       hold_on: tuple[type[Exception], ...] = ()) -> None:
        assert self.publisher is not None
        channel = await self._channel()
        await channel.set_qos(prefetch_count=prefetch or self.settings.broker.prefetch)
        policy = policy or getattr(self.settings.retry, stage)
        consumer: StageConsumer[Any] = StageConsumer(
            stage=stage, queue_name=names.stage_queue(self.settings.broker.prefix, stage),
            prefix=self.settings.broker.prefix, decoder=decoder, handler=handler, publisher=self.publisher,
            policy=policy, metrics=self.metrics, order_key=order_key, hold_on=hold_on,
        )
        await consumer.start(channel)
        self._consumers.append(consumer)

    def _hand_back(self) -> HandBack | None:
        """With several nodes, the inbound stage's hold after its connection comes back."""
        broker = self.settings.broker
        if len(broker.urls) < 2 or broker.hand_back_hold_s <= 0:
            return None
        assert self.connection is not None
        hand_back = HandBack(broker.hand_back_hold_s)
        self.connection.close_callbacks.add(lambda _sender, exc=None, **_kw: hand_back.closed(exc))
        self.connection.reconnect_callbacks.add(lambda *_args, **_kw: hand_back.reconnected())
        return hand_back

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
        accounts = list(self.settings.accounts().items())
        # Whichever dispatcher subscribes to an account's queue first sends for it: starting at a
        # random account, processes started together share the accounts instead of the first
        # one taking them all (the others stand by either way).
        start = random.randrange(len(accounts)) if accounts else 0
        for account, config in accounts[start:] + accounts[:start]:
            # A small prefetch: what is prefetched but unsent is all a dying dispatcher hands over.
            await self._consume(names.dispatch_stage(account), dispatch_stage_decoder, handler,
                                prefetch=2 * config.sms_per_second, policy=self.settings.retry.dispatch,
                                order_key=conversation_of)

    def _inbound_media(self, ledger: Ledger) -> InboundMedia | None:
        if self.media_store is None:
            return None
        fetcher = MediaFetcher(self._media_session(), self.media_store, self.settings.media)
        return InboundMedia(self.settings, fetcher, ledger, self.metrics)

    def _outbound_media(self, ledger: Ledger) -> OutboundMedia | None:
        if self.media_store is None:
            return None
        return OutboundMedia(self.settings, MediaFetcher(self._media_session(), self.media_store, self.settings.media),
                             ledger)

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
            self._stack.push_async_callback(self._http.close)
        return self._http

    async def _start_sip_intake(self, ledger: Ledger) -> None:
        """Phones text out by SIP MESSAGE; off (and said so) while no peer is configured."""
        if not self.settings.sip_intake.peers:
            log.info("sip intake off: no [sip_intake] peers configured")
            return
        assert self.publisher is not None
        self.sip_intake = SipIntake(self.settings, self.publisher, ledger)
        await self.sip_intake.start()
        self._stack.push_async_callback(self.sip_intake.stop)

    def _media_session(self) -> aiohttp.ClientSession:
        """Media downloads have a session of their own: it connects only to allowed addresses."""
        if self._media_http is None:
            self._media_http = guarded_session(self.settings.media.fetch_allowed_networks)
            self._stack.push_async_callback(self._media_http.close)
        return self._media_http

    def _build_adapters(self) -> dict[str, DeliveryAdapter]:
        assert self.publisher is not None
        for tenant in {t.tenant for t in self.settings.pbx_targets}:
            for index, target in enumerate(self.settings.targets_of(tenant)):
                adapter = self._adapter(target)
                self._adapters[adapter_key(tenant, index)] = adapter
                self._stack.push_async_callback(adapter.close)
        return self._adapters

    def _adapter(self, target: PbxTarget) -> DeliveryAdapter:
        assert self.publisher is not None
        if isinstance(target, HttpTarget):
            return HttpAdapter(target, self._http_session())
        if isinstance(target, FlowrouteTarget):
            return FlowrouteAdapter(target, self._http_session())
        if isinstance(target, SipTarget):
            return SipAdapter(target)
        if isinstance(target, EmailTarget):
            return EmailAdapter(target, fetch_networks(self.settings))
        return AmqpAdapter(target, self.publisher)

    async def _start_health(self) -> None:
        """Worker-only processes: /healthz, /readyz and /metrics on their own small port."""
        runner = web.AppRunner(make_health_app(self.metrics, self.readiness), access_log=None)
        await self._serve(runner, self.settings.observability.host, self.settings.observability.port)
        host, port = runner.addresses[0][:2]
        self.health_url = f"http://{host}:{port}"

    async def _serve(self, runner: web.AppRunner, host: str, port: int) -> None:
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)  # stops accepting, lets running requests finish
        await web.TCPSite(runner, host, port).start()

    def _queues(self) -> list[str]:
        prefix = self.settings.broker.prefix
        stages = [*topology.STAGES, *(names.dispatch_stage(a) for a in self.settings.accounts())]
        return [names.stage_queue(prefix, s) for s in stages] + [names.dead_queue(prefix), names.unrouted_queue(prefix)]

    async def _start_receiver(self) -> None:
        assert self.publisher is not None
        assert self.ledger is not None
        app = make_app(self.settings, self.publisher, self.metrics, self.readiness, self.ledger)
        if self.media_store is not None and self.settings.media.link_key is not None:
            add_media_routes(app, self.settings.media.link_key, self.media_store, self.ledger)
            add_upload_route(app, self.settings)
        # No access log: the webhook path carries the configuration's secret token. keepalive_timeout
        # also closes a connection whose headers are not complete in time (aiohttp runs it from the
        # connection's start); the body's own deadline is the receiver's (`receiver._read_body`).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.drain_timeout_s,
                               keepalive_timeout=self.settings.receiver.read_timeout_s)
        await self._serve(runner, self.settings.receiver.host, self.settings.receiver.port)
        host, port = runner.addresses[0][:2]
        self.receiver_url = f"http://{host}:{port}"

    def _online(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def _stop_consumers(self) -> None:
        """Stop intake on every consumer at once, then give all in-flight work one drain timeout."""
        # With the broker gone there is nothing to cancel politely: unacked messages return to
        # their queues when the connection ends. Each phase is bounded once for all its steps.
        await _bounded_if(self._online, lambda: asyncio.gather(*(c.cancel() for c in self._consumers)),
                          "cancel consumers")
        await asyncio.gather(*(c.drain(self.settings.drain_timeout_s) for c in self._consumers))
        self._consumers.clear()

    async def _close_channels(self) -> None:
        open_channels = [c for c in self._channels if not c.is_closed]
        self._channels.clear()
        await _bounded_if(self._online, lambda: asyncio.gather(*(c.close() for c in open_channels)),
                          "close channels")

    async def stop(self) -> None:
        """Undo start in reverse order; every broker call is bounded, so SIGTERM works even while
        the broker is down."""
        await self._stack.aclose()
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


async def _bounded_if(online: Callable[[], bool], step: Callable[[], Awaitable[Any]], what: str) -> None:
    """Run a broker step if the broker is reachable, bounded in time; skip it otherwise."""
    if online():
        await _bounded(step(), what)


async def _bounded(step: Awaitable[Any], what: str, seconds: float = BROKER_STEP_TIMEOUT_S) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except (TimeoutError, Exception) as exc:  # broker gone: unacked messages are redelivered anyway
        log.warning("shutdown step skipped", step=what, error=repr(exc))
