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
from tests.support.fixtures import raw_payload
from tests.support.processes import logged
from tests.support.settings import free_port

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdefghijkl"

CONFIG = """
[broker]
urls = ["{amqp_url}"]
prefix = "{prefix}"

[ledger]
url = "sqlite:///{ledger}"

[receiver]
port = {port}

[logging]
format = "json"

[retry.delivery]
max_attempts = 5
base_delay_s = 0.2
max_delay_s = 1.0

[[sms_configs]]
id = "shop"
tenant = "acme"
account = "test"   # the account whose dispatch queue the `channel` fixture removes
access_key = {{ env = "E2E_AK" }}
secret_key = {{ env = "E2E_SK" }}
webhook_token = {{ env = "E2E_TOKEN" }}
dids = ["+12065550100"]

[[inbound_rules]]
config = "shop"
extensions = ["101", "102"]

[[pbx_targets]]
kind = "http"
tenant = "acme"
url = "{pbx_url}"
auth_value = {{ env = "E2E_PBX_AUTH" }}
"""


@pytest.fixture
async def bridge_process(
    tmp_path: Path, amqp_url: str, prefix: str, pbx: FakePbx, channel: AbstractChannel
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, Path]]:
    port = free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(CONFIG.format(amqp_url=amqp_url, prefix=prefix, port=port, pbx_url=pbx.url,
                                    ledger=tmp_path / "ledger.sqlite3"))
    env = {**os.environ, "E2E_AK": "ak", "E2E_SK": "sk-e2e-secret", "E2E_TOKEN": TOKEN,
           "E2E_PBX_AUTH": "Bearer e2e"}
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
    async with aiohttp.ClientSession() as http:
        for _ in range(150):
            if proc.returncode is not None:
                pytest.fail(f"smsbridge exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"smsbridge never became ready:\n{log_path.read_text()}")


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
