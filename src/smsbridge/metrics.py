"""Prometheus metrics, on a registry of our own (no import-time global state)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.IGNORECASE)
# Content types named in the metric; anything else is "other" (a header must not mint labels).
NAMED_TYPES = frozenset({"text/plain", "text/html", "application/x-www-form-urlencoded", "multipart/form-data",
                         "application/octet-stream", "application/xml", "text/xml"})


def content_type_label(header: str | None) -> str | None:
    """None for a JSON type (`application/json`, `application/*+json`, any parameters), else a
    bounded label: `none` when the header is missing, the type when it is a common one, `other`."""
    if header is None or not header.strip():
        return "none"
    mime = header.split(";", 1)[0].strip().lower()
    if _JSON_TYPE.fullmatch(mime):
        return None
    return mime if mime in NAMED_TYPES else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "smsbridge_webhooks_total", "Webhook requests by configuration and result", ["config", "result"], registry=r
        )
        self._webhook_results: dict[tuple[str, int], Counter] = {}
        self.webhook_seconds = Histogram(
            "smsbridge_webhook_seconds", "Webhook handling time, publish confirm included", registry=r
        )
        self.parked = Counter(
            "smsbridge_webhooks_parked_total", "Webhooks parked in the dead-letter queue", ["config", "reason"],
            registry=r,
        )
        self.webhook_content_types = Counter(
            "smsbridge_webhook_non_json_content_type_total",
            "Webhooks accepted whose Content-Type was not JSON (Flowroute sends application/json)",
            ["config", "content_type"], registry=r,
        )
        self.dlr_unknown = Counter(
            "smsbridge_dlr_unknown_message_total",
            "Delivery receipts for a message id this bridge never sent: logged, not forwarded", ["config"], registry=r,
        )
        self.processed = Counter(
            "smsbridge_messages_total", "Messages finished by stage and outcome", ["stage", "outcome"], registry=r
        )
        self.warmup_copies = Counter(
            "smsbridge_broker_warmup_copies_total",
            "Copies of a confirmed webhook sent on another route to warm its channel (broker/warmup.py)",
            ["route"], registry=r,
        )
        self.retried = Counter("smsbridge_retries_total", "Messages scheduled for retry", ["stage"], registry=r)
        self.held = Counter("smsbridge_held_total",
                            "Messages held unacked and retried in place, once each (inbound: ledger unavailable)",
                            ["stage"], registry=r)
        self.dead_lettered = Counter(
            "smsbridge_dead_lettered_total", "Messages dead-lettered by stage and reason", ["stage", "reason"],
            registry=r,
        )
        self.delivered = Counter(
            "smsbridge_delivered_total", "Texts delivered to the PBX by tenant and adapter", ["tenant", "adapter"],
            registry=r,
        )

        self.flowroute_answers = Counter(
            "smsbridge_flowroute_answers_total", "Flowroute send answers by account and HTTP status (0: no answer)",
            ["account", "status"], registry=r,
        )
        self.limiter_wait = Counter(
            "smsbridge_rate_limiter_wait_seconds_total", "Time sends waited for the account's rate limit",
            ["account"], registry=r,
        )
        self.inbound_latency = Histogram(
            "smsbridge_inbound_latency_seconds", "From the webhook's arrival to the PBX's acceptance",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.dispatch_latency = Histogram(
            "smsbridge_dispatch_latency_seconds", "From the allowed request to Flowroute's acceptance",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "smsbridge_queue_messages", "Messages ready in each queue (polled)", ["queue"], registry=r,
        )
        self.dispatcher_active = Gauge(
            "smsbridge_dispatcher_active",
            "1 once this process has received work for the account (only the active consumer does), else 0",
            ["account"], registry=r,
        )
        self.media_fetched_bytes = Counter(
            "smsbridge_media_fetched_bytes_total", "Bytes of MMS attachments downloaded into the media store",
            ["tenant"], registry=r,
        )
        self.media_missing = Counter(
            "smsbridge_media_missing_total",
            "MMS attachments the PBX got named in media_problems instead of as a picture: Flowroute gave no "
            "usable URL (unusable), the download failed (failed) or was refused (refused); alert on any increase",
            ["tenant", "reason"], registry=r,
        )

    def webhook_result(self, config: str, status: int) -> Counter:
        """The webhooks counter for one configuration and HTTP status. Looked up once per pair:
        `labels()` takes a lock and checks its arguments, a cost the receiver pays per webhook."""
        child = self._webhook_results.get((config, status))
        if child is None:
            child = self._webhook_results[(config, status)] = self.webhooks.labels(config, str(status))
        return child

    def webhook_content_type(self, config: str, header: str | None) -> None:
        """Count a JSON webhook that did not say it was JSON (we read it all the same)."""
        label = content_type_label(header)
        if label is not None:
            self.webhook_content_types.labels(config, label).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
