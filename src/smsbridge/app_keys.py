"""Typed aiohttp application keys shared by the receiver and the history API."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings
from smsbridge.ledger import Ledger
from smsbridge.metrics import Metrics

ReadyCheck = Callable[[], dict[str, bool]]
# The readiness check that /healthz also reads: False once the ledger can never answer again.
LEDGER_USABLE = "ledger_usable"

SETTINGS = web.AppKey("settings", Settings)
PUBLISHER = web.AppKey("publisher", Publisher)
LEDGER = web.AppKey("ledger", Ledger)
METRICS = web.AppKey("metrics", Metrics)
READY: web.AppKey[ReadyCheck] = web.AppKey("ready")
