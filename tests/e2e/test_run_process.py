"""`smsbridge run` as a real subprocess on a test configuration: webhooks in, fake PBX out,
SIGTERM out cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.sandbox.pbx import FakePbx
from smsbridge.testing.config import FAST_RETRY, bridge_document, merge, secrets_env, write
from tests.support import processes
from tests.support.fixtures import raw_payload
from tests.support.processes import logged
from tests.support.settings import free_port

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdefghijkl"



@pytest.fixture
async def bridge_process(
    tmp_path: Path, amqp_url: str, prefix: str, pbx: FakePbx, channel: AbstractChannel
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, Path]]:
    port = free_port()
    doc = bridge_document(amqp_url=amqp_url, prefix=prefix, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                          port=port, pbx_url=pbx.url, config_id="shop", extensions=("101", "102"))
    config = write(tmp_path / "bridge.toml", merge(doc, FAST_RETRY, {"outbound_rules": None}))
    env = {**os.environ, **secrets_env("E2E", access_key="ak", secret_key="sk-e2e-secret", webhook_token=TOKEN)}
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smsbridge", "run", "--config", str(config), env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, proc, log_path)
        yield proc, base, log_path
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_ready(base: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
    await processes.wait_ready(proc, log_path, url=f"{base}/readyz")


async def test_webhooks_in_fake_pbx_out_then_clean_sigterm(
    bridge_process: tuple[asyncio.subprocess.Process, str, Path], pbx: FakePbx
) -> None:
    proc, base, log_path = bridge_process
    url = f"{base}/webhooks/flowroute/shop/{TOKEN}"
    async with aiohttp.ClientSession() as http:
        for name in ("sms_jsonapi_2024", "mms_2017"):
            async with http.post(url, data=raw_payload(name)) as r:
                assert r.status == 200, await r.text()
    received = await pbx.wait_for(4, timeout=15)
    assert sorted((d["mdr_id"], d["extension"]) for d in received) == [
        ("mdr2-4e5435f325d9431f9e64118b20895b08", "101"), ("mdr2-4e5435f325d9431f9e64118b20895b08", "102"),
        ("mdr2-ec9f7b30dc7f11e786688e76b030dee9", "101"), ("mdr2-ec9f7b30dc7f11e786688e76b030dee9", "102"),
    ]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    log = log_path.read_text()
    assert logged(log, event="bridge stopped")
    # secrets and PII never reach the log
    for secret in (TOKEN, "sk-e2e-secret", "Bearer e2e", "Greetings on Friday evening!", "12065550199"):
        assert secret not in log
