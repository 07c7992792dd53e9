from __future__ import annotations

import pytest

from smsbridge.metrics import Metrics, content_type_label


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


@pytest.mark.parametrize(
    ("header", "label"),
    [("application/json", None), ("application/json; charset=utf-8", None), ("Application/JSON", None),
     ("application/vnd.api+json", None), (None, "none"), ("", "none"), ("text/plain", "text/plain"),
     ("text/plain; charset=utf-8", "text/plain"),
     ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
     ("image/x-anything-an-attacker-likes", "other"), ("application/jsonp", "other")],
)
def test_webhook_content_type_labels_are_bounded(header: str | None, label: str | None) -> None:
    assert content_type_label(header) == label
