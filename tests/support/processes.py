"""Running `smsbridge run` as real processes in tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ENV = {"E2E_AK": "AK-test", "E2E_SK": "SK-test", "E2E_TOKEN": "e2e-token-0123456789abcdefghijkl",
       "E2E_PBX_AUTH": "Bearer e2e"}

TEMPLATE = """
drain_timeout_s = 10

[broker]
urls = ["{amqp_url}"]
prefix = "{prefix}"

[receiver]
port = {port}
public_url = "http://127.0.0.1:{port}"

[ledger]
url = "{ledger_url}"
{ledger_schema}

[flowroute]
api_base = "{api_base}"
timeout_s = 5

[logging]
format = "json"

[observability]
port = 0

[retry.delivery]
max_attempts = 5
base_delay_s = 0.2
max_delay_s = 1.0

[retry.dispatch]
max_attempts = 5
base_delay_s = 0.2
max_delay_s = 1.0

[[sms_configs]]
id = "main"
tenant = "acme"
account = "test"
access_key = {{ env = "E2E_AK" }}
secret_key = {{ env = "E2E_SK" }}
webhook_token = {{ env = "E2E_TOKEN" }}
dids = ["+12065550100"]

[[inbound_rules]]
config = "main"
extensions = ["101"]

[[outbound_rules]]
config = "main"
extensions = ["*"]

[[pbx_targets]]
kind = "http"
tenant = "acme"
url = "{pbx_url}"
auth_value = {{ env = "E2E_PBX_AUTH" }}
"""


def write_config(path: Path, *, amqp_url: str, prefix: str, port: int, ledger_url: str, ledger_schema: str | None,
                 api_base: str = "http://127.0.0.1:9", pbx_url: str = "http://127.0.0.1:9/none") -> Path:
    path.write_text(TEMPLATE.format(
        amqp_url=amqp_url, prefix=prefix, port=port, ledger_url=ledger_url, api_base=api_base, pbx_url=pbx_url,
        ledger_schema=f'schema = "{ledger_schema}"' if ledger_schema else ""))
    return path


async def start(config: Path, log: Path, *roles: str) -> asyncio.subprocess.Process:
    role_args = [arg for role in roles for arg in ("--role", role)]
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smsbridge", "run", "--config", str(config), *role_args,
            env={**os.environ, **ENV}, stdout=out, stderr=out)


async def wait_ready(proc: asyncio.subprocess.Process, log: Path, *, url: str | None = None,
                     marker: str = "bridge started", timeout: float = 20.0) -> None:
    """Until `url` answers 200 (a receiver's /readyz) or the log shows `marker`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            if proc.returncode is not None:
                pytest.fail(f"smsbridge exited with {proc.returncode}:\n{log.read_text()}")
            if url is None and logged(log.read_text(), event=marker):
                return
            if url is not None:
                try:
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
            await asyncio.sleep(0.1)
    pytest.fail(f"smsbridge never became ready:\n{log.read_text()}")


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process (other lines, e.g. a traceback, are skipped)."""
    events = []
    for line in text.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            events.append(parsed)
    return events


def logged(text: str, **fields: Any) -> bool:
    """Did some log line carry all these fields with these values?"""
    return any(all(event.get(k) == v for k, v in fields.items()) for event in log_events(text))
