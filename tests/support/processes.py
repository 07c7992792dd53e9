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

from smsbridge.testing.config import FAST_RETRY, bridge_document, merge, secrets_env, write

ENV = secrets_env("E2E", webhook_token="e2e-token-0123456789abcdefghijkl")


def write_config(path: Path, *, amqp_url: str, prefix: str, port: int, ledger_url: str, ledger_schema: str | None,
                 api_base: str = "http://127.0.0.1:9", pbx_url: str = "http://127.0.0.1:9/none") -> Path:
    """The e2e configuration: fast retries, the secrets of `ENV`, one HTTP PBX target."""
    doc = bridge_document(amqp_url=amqp_url, prefix=prefix, ledger_url=ledger_url, port=port, api_base=api_base,
                          pbx_url=pbx_url)
    return write(path, merge(doc, FAST_RETRY, {"ledger": {"schema": ledger_schema}}))


async def start(config: Path, log: Path, *roles: str) -> asyncio.subprocess.Process:
    role_args = [arg for role in roles for arg in ("--role", role)]
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smsbridge", "run", "--config", str(config), *role_args,
            env={**os.environ, **ENV}, stdout=out, stderr=out)


async def wait_ready(proc: asyncio.subprocess.Process, log: Path, *, url: str | None = None,
                     marker: str = "bridge started", timeout: float = 90.0) -> None:
    """Until `url` answers 200 (a receiver's /readyz) or the log shows `marker`. The timeout is
    generous on purpose: with both cores busy, importing and connecting alone can take many seconds."""
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
