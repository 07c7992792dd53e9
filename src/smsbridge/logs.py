"""structlog set-up: JSON when not on a terminal, one line per outcome, secrets and PII masked.

The standard library's logging (aiohttp, aio-pika, asyncio) is routed through the same chain,
so their lines and tracebacks are JSON too and pass the same masking.

Secrets are masked by key (token, secret, password, authorization) and by type (`Secret`
prints a mask anyway). Message bodies and full phone numbers are personal data: they are masked
unless the operator turns `logging.show_pii` on.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

from smsbridge.config import LoggingSettings
from smsbridge.logwriter import LineWriter
from smsbridge.numbers import mask
from smsbridge.redact import mask_numbers
from smsbridge.secret import MASK, Secret

SECRET_KEYS = frozenset({"token", "secret", "secret_key", "access_key", "password", "authorization", "auth_value"})
NUMBER_KEYS = frozenset({"from", "to", "from_", "number", "did"})
BODY_KEYS = frozenset({"body", "text"})
# Identifiers that are not free text: masking a digit run in them would only mangle them.
ID_KEYS = frozenset({"timestamp", "event_id", "amqp_message_id", "mdr_id", "client_message_id", "id", "first_id",
                     "bridge_id"})


def redactor(show_pii: bool) -> structlog.types.Processor:
    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if type(value) is str and _PLAIN[key]:  # the common case, decided in one lookup
                continue
            if isinstance(value, Secret) or key.lower() in SECRET_KEYS:
                event[key] = MASK
            elif show_pii:
                continue
            elif key in NUMBER_KEYS and isinstance(value, str):
                event[key] = mask(value)
            elif key in BODY_KEYS and isinstance(value, str):
                event[key] = f"<{len(value)} chars>"
        return event

    return redact


def text_masker(show_pii: bool) -> structlog.types.Processor:
    """After the traceback is rendered: full phone numbers in any text masked (`redact.mask_numbers`):
    a reason, an error or a traceback may quote input, and so may a value a PBX chose (its tenant)."""

    def mask_text(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if show_pii:
            return event
        for key, value in event.items():
            if type(value) is str and key not in ID_KEYS:
                event[key] = mask_numbers(value)
        return event

    return mask_text


class StdlibToStructlog(logging.Handler):
    """The standard library's records (aiohttp, aio-pika, asyncio, warnings) through structlog:
    every line, tracebacks included, one JSON object that passes the same masking as ours."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), logger=record.name,
                                                  exc_info=record.exc_info or None)
        except Exception:  # a record that cannot be formatted: the handler's own fallback
            self.handleError(record)


def route_stdlib(level: int) -> None:
    """Give the root logger (once) a handler that hands every record to structlog. Without one,
    Python's last-resort handler would print records as plain text."""
    root = logging.getLogger()
    if not any(isinstance(handler, StdlibToStructlog) for handler in root.handlers):
        root.addHandler(StdlibToStructlog())
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    structlog.get_logger("smsbridge").critical("uncaught exception", exc_info=(kind, error, trace))


class _Keys(dict[str, bool]):
    """Whether a key, in any case, is neither a secret's nor personal data's (filled as keys are seen)."""

    def __missing__(self, key: str) -> bool:
        plain = key.lower() not in SECRET_KEYS and key not in NUMBER_KEYS and key not in BODY_KEYS
        if len(self) < 10_000:  # keys come from code, not from input; the bound is only a guard
            self[key] = plain
        return plain


_PLAIN = _Keys()


class UtcStamper:
    """`timestamp` in ISO 8601, UTC, to the microsecond (`2026-11-26T05:55:08.428208Z`). The date
    and time of day are formatted once per second; structlog's TimeStamper formats a datetime
    per line, which was the most expensive step of a receiver's log line."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads always see a matching pair

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        whole = int(now)
        second, text = self._second
        if whole != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            self._second = (whole, text)
        event["timestamp"] = f"{text}.{int((now - whole) * 1_000_000):06d}Z"
        return event


_encoder = msgspec.json.Encoder(enc_hook=repr)


def _json_line(event: Any, **_: Any) -> bytes:
    # msgspec is several times faster than the standard json module; unknown types log as repr().
    return _encoder.encode(event)


def _json_text(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


def configure(settings: LoggingSettings, *, stream: Any = None, cache: bool = False) -> None:
    """Configure structlog, in the entry point. `cache` assembles each logger once (faster); only
    for a process that configures logging exactly once, as `smsbridge run` does."""
    stream = stream or sys.stderr
    json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    binary = getattr(stream, "buffer", None)  # JSON lines go to the bytes underneath, unconverted
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line if binary else _json_text)
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    if json and binary:
        writer = LineWriter(binary)
        factory: Any = lambda *_: writer  # noqa: E731  (one writer for every logger)
    else:
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            UtcStamper(),
            redactor(settings.show_pii),
            structlog.processors.format_exc_info,
            text_masker(settings.show_pii),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, settings.level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    route_stdlib(getattr(logging, settings.level.upper()))
