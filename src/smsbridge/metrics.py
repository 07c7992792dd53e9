"""Prometheus metrics, on a registry of our own (no import-time global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "smsbridge_webhooks_total", "Webhook requests by configuration and result", ["config", "result"], registry=r
        )
        self.webhook_seconds = Histogram(
            "smsbridge_webhook_seconds", "Webhook handling time, publish confirm included", registry=r
        )
        self.parked = Counter(
            "smsbridge_webhooks_parked_total", "Webhooks parked in the dead-letter queue", ["config", "reason"],
            registry=r,
        )
        self.processed = Counter(
            "smsbridge_messages_total", "Messages finished by stage and outcome", ["stage", "outcome"], registry=r
        )
        self.retried = Counter("smsbridge_retries_total", "Messages scheduled for retry", ["stage"], registry=r)
        self.dead_lettered = Counter(
            "smsbridge_dead_lettered_total", "Messages dead-lettered by stage and reason", ["stage", "reason"],
            registry=r,
        )
        self.delivered = Counter(
            "smsbridge_delivered_total", "Texts delivered to the PBX by tenant and adapter", ["tenant", "adapter"],
            registry=r,
        )

        self.flowroute_answers = Counter(
            "smsbridge_flowroute_answers_total", "Flowroute send answers by account and outcome",
            ["account", "outcome"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
