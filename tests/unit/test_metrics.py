from __future__ import annotations

from smsbridge.metrics import Metrics


def test_webhook_results_count_per_configuration_and_status() -> None:
    metrics = Metrics()
    metrics.webhook_result("main", 200).inc()
    metrics.webhook_result("main", 200).inc()
    metrics.webhook_result("main", 503).inc()
    metrics.webhook_result("unknown", 404).inc()
    text = metrics.render().decode()
    assert 'smsbridge_webhooks_total{config="main",result="200"} 2.0' in text
    assert 'smsbridge_webhooks_total{config="main",result="503"} 1.0' in text
    assert 'smsbridge_webhooks_total{config="unknown",result="404"} 1.0' in text


def test_each_metrics_object_counts_on_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.webhook_result("main", 200).inc()
    assert 'smsbridge_webhooks_total{config="main",result="200"}' not in second.render().decode()
