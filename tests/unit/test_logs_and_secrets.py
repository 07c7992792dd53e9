from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

import structlog

from smsbridge import logs
from smsbridge.config import LoggingSettings
from smsbridge.secret import Secret


def capture(show_pii: bool, **fields: object) -> dict[str, object]:
    stream = io.StringIO()
    logs.configure(LoggingSettings(format="json", show_pii=show_pii), stream=stream)
    structlog.get_logger("t").info("line", **fields)
    return json.loads(stream.getvalue())


def test_secrets_never_reach_a_log_line() -> None:
    line = capture(True, token="abc123", secret_key="s3cr3t", header=Secret("Bearer xyz"))
    text = json.dumps(line)
    assert "abc123" not in text and "s3cr3t" not in text and "xyz" not in text


def test_bodies_and_numbers_are_masked_by_default() -> None:
    line = capture(False, body="my PIN is 1234", to="+12065550100", mdr_id="mdr2-1")
    assert line["body"] == "<14 chars>" and line["to"] == "+1******0100" and line["mdr_id"] == "mdr2-1"


def test_pii_shown_when_the_operator_asks() -> None:
    line = capture(True, body="hello", to="+12065550100")
    assert line["body"] == "hello" and line["to"] == "+12065550100"


def test_secret_hides_in_every_rendering() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in f"{secret} {secret!r} {secret:>20} {[secret]}"
    assert secret.reveal() == "hunter2"
    assert secret.matches("hunter2") and not secret.matches("hunter3")


def test_secret_keys_masked_in_any_case_every_time() -> None:
    # The redactor remembers which keys are plain; a secret key must stay masked on every line.
    for _ in range(2):
        line = capture(True, Authorization="Basic QUs6U0s=", TOKEN="t0k3n", note="plain")
        assert line["Authorization"] == line["TOKEN"] == "********" and line["note"] == "plain"


def test_timestamps_are_utc_to_the_microsecond() -> None:
    before = datetime.now(UTC)
    stamps = [capture(False)["timestamp"] for _ in range(3)]
    after = datetime.now(UTC)
    for stamp in stamps:
        assert isinstance(stamp, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        assert before - timedelta(milliseconds=1) <= datetime.fromisoformat(stamp) <= after
    assert stamps == sorted(stamps)


def test_message_ids_keep_their_digits_under_every_id_key() -> None:
    """A Flowroute or bridge id such as mdr2-1234567890abcdef has digit runs a phone number could
    have: masked, the id could no longer be looked up in the logs (the sandbox PBX logs `id`)."""
    ident = "mdr2-2065550199abcdef0123456789"
    line = capture(False, id=ident, first_id=ident, bridge_id=ident, mdr_id=ident, reason=f"for {ident}")
    assert line["id"] == line["first_id"] == line["bridge_id"] == line["mdr_id"] == ident
    assert "2065550199" not in str(line["reason"])


def test_numbers_in_reasons_errors_and_tracebacks_are_masked() -> None:
    """Issue 16 point 5: a full number quoted in free text (a dead-letter reason, an exception)."""
    stream = io.StringIO()
    logs.configure(LoggingSettings(format="json", show_pii=False), stream=stream)
    try:
        raise ValueError("bad row ('+12065550199', 'hello')")
    except ValueError:
        structlog.get_logger("t").exception("handler crashed", reason="destination +14255550123 refused",
                                            error="invalid number '2065550177'")
    line = json.loads(stream.getvalue())
    text = json.dumps(line)
    for number in ("12065550199", "14255550123", "2065550177"):
        assert number not in text
    assert "+1******0199" in line["exception"] and line["reason"] == "destination +1******0123 refused"


def test_standard_library_logging_comes_out_as_json_through_the_same_masking() -> None:
    """aiohttp's and aio-pika's records (tracebacks too) are JSON lines, not plain text."""
    import logging

    stream = io.StringIO()
    logs.configure(LoggingSettings(format="json", show_pii=False), stream=stream)
    try:
        raise ConnectionError("peer +12065550199 went away")
    except ConnectionError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    logging.getLogger("aio_pika.robust_connection").warning("Connection attempt to %s failed", "amqp://x")
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]  # every line parses
    assert [line["event"] for line in lines] == ["Error handling request", "Connection attempt to amqp://x failed"]
    assert lines[0]["logger"] == "aiohttp.server" and "ConnectionError" in lines[0]["exception"]
    assert "12065550199" not in stream.getvalue()
