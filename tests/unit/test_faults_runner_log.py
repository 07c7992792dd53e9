"""`make faults` prints its progress and table; what its own fake PBX, simulator and clients log
goes to a file, masked like any smsbridge process's log (before, every text the PBX took was
printed with its sender's number and body)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import aiohttp
import pytest
from faults.run import log_to_file

from smsbridge import logs
from smsbridge.config import LoggingSettings
from smsbridge.sandbox.pbx import FakePbx


async def test_the_runner_logs_to_its_file_with_numbers_and_bodies_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = log_to_file(tmp_path)
    assert sys.excepthook is sys.__excepthook__  # a crash of the runner itself still reaches the terminal
    pbx = FakePbx()
    await pbx.start()
    try:
        async with aiohttp.ClientSession() as http:
            delivery = {"extension": "101", "from": "+12065550006", "to": "+12065550100", "body": "c6 n85"}
            async with http.post(pbx.url, json=delivery) as answer:
                assert answer.status == 200
        logging.getLogger("aiormq.connection").warning("Unexpected connection close from %s", "amqp://x")
    finally:
        await pbx.stop()
    stream.close()
    logs.configure(LoggingSettings(format="json"), stream=sys.stderr)  # not left writing to a closed file
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    lines = [json.loads(text) for text in (tmp_path / "runner.log").read_text().splitlines()]
    assert [line["event"] for line in lines] == ["PBX received a text", "Unexpected connection close from amqp://x"]
    assert lines[0]["from_"] == "+1******0006" and "c6 n85" not in json.dumps(lines)
