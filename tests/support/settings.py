"""Settings for tests, built in code with unique broker prefixes."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import msgspec

from smsbridge.config import (
    AmqpTarget,
    FlowrouteSettings,
    HttpTarget,
    InboundRule,
    LedgerSettings,
    OutboundRule,
    RetryPolicy,
    RetrySettings,
    Settings,
    SmsConfig,
)
from smsbridge.secret import Secret
from tests.support.ports import free_port

TOKEN = "test-token-abcdefghijklmnopqrstuvwxyz"
DID_MAIN = "+12065550100"
DID_BILLING = "+12065550101"
ACCOUNT = "test"


def unique_prefix(tag: str = "t") -> str:
    return f"sbtest-{tag}-{uuid.uuid4().hex[:10]}"


def sms_config(**overrides: Any) -> SmsConfig:
    fields: dict[str, Any] = dict(
        id="main", tenant="acme", access_key=Secret("AK-test"), secret_key=Secret("SK-test"),
        webhook_token=Secret(TOKEN), dids=[DID_MAIN, DID_BILLING], fallback_extensions=[], account=ACCOUNT,
    )
    fields.update(overrides)
    return SmsConfig(**fields)


def fast_retry() -> RetrySettings:
    quick = RetryPolicy(max_attempts=5, base_delay_s=0.2, max_delay_s=1.0, max_age_s=60)
    return RetrySettings(inbound=quick, delivery=quick, outbound=quick, dispatch=quick)


OUTBOUND_RULES = [OutboundRule(config="main", extensions=["101", "102"], dids=[DID_MAIN], name="front desk")]


def with_flowroute(base: Settings, api_base: str, *, rules: list[OutboundRule] | None = None) -> Settings:
    """Point the settings at a Flowroute simulator, with a receiver port known in advance so that
    `dlr_callback` URLs reach this bridge."""
    port = free_port()
    return msgspec.structs.replace(
        base,
        flowroute=FlowrouteSettings(api_base=api_base, timeout_s=5.0),
        outbound_rules=OUTBOUND_RULES if rules is None else rules,
        receiver=msgspec.structs.replace(base.receiver, port=port, public_url=f"http://127.0.0.1:{port}"),
    )


def settings(
    *,
    prefix: str,
    pbx_url: str = "http://127.0.0.1:9/unused",
    rules: list[InboundRule] | None = None,
    amqp_exchange: str | None = None,
    receiver_port: int = 0,
    ledger: LedgerSettings | None = None,
    **config_overrides: Any,
) -> Settings:
    target: HttpTarget | AmqpTarget = (
        AmqpTarget(tenant="acme", exchange=amqp_exchange)
        if amqp_exchange
        else HttpTarget(tenant="acme", url=pbx_url, auth_value=Secret("Bearer pbx-secret"), timeout_s=2.0)
    )
    default_rules = [
        InboundRule(config="main", did=DID_MAIN, extensions=["101", "102"]),
        InboundRule(config="main", did=DID_BILLING, extensions=["201"]),
    ]
    raw = msgspec.structs.replace(
        Settings(),
        sms_configs=[sms_config(**config_overrides)],
        inbound_rules=default_rules if rules is None else rules,
        pbx_targets=[target],
        retry=fast_retry(),
        drain_timeout_s=5.0,
        ledger=ledger or LedgerSettings(url=f"sqlite:///{Path(tempfile.gettempdir()) / prefix}.sqlite3"),
    )
    return msgspec.structs.replace(
        raw,
        broker=msgspec.structs.replace(raw.broker, prefix=prefix, publish_timeout_s=3.0),
        receiver=msgspec.structs.replace(raw.receiver, port=receiver_port, max_body_bytes=64 * 1024),
    )
