"""SIGTERM with deliveries in flight: the process stops taking work, finishes what it holds,
and exits 0. Nothing is lost, and a fresh process delivers nothing twice."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.sandbox.pbx import FakePbx
from tests.support import processes
from tests.support.fixtures import raw_payload
from tests.support.processes import logged
from tests.support.settings import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e


async def test_sigterm_drains_in_flight_work_without_loss_or_repeats(
    tmp_path: Path, amqp_url: str, prefix: str, channel: AbstractChannel,
) -> None:
    pbx = FakePbx(delay_s=1.5)  # slow enough that SIGTERM lands mid-delivery
    await pbx.start()
    port = free_port()
    config = processes.write_config(tmp_path / "b.toml", amqp_url=amqp_url, prefix=prefix, port=port,
                                    ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", ledger_schema=None,
                                    pbx_url=pbx.url)
    first = await processes.start(config, tmp_path / "first.log")
    try:
        await processes.wait_ready(first, tmp_path / "first.log", url=f"http://127.0.0.1:{port}/readyz")
        template = raw_payload("legacy_flat_mdr1")
        async with aiohttp.ClientSession() as http:
            for n in range(6):
                body = template.replace(b"mdr1-febb118b9b034338adfc662a8c02fd88", f"mdr1-drain-{n}".encode())
                body = body.replace(b"18555550168", f"1206555{n:04d}".encode())  # six conversations
                async with http.post(f"http://127.0.0.1:{port}/webhooks/flowroute/main/"
                                     f"{processes.ENV['E2E_TOKEN']}", data=body) as response:
                    assert response.status == 200
        await eventually(lambda: pbx.arrived >= 1, what="a delivery reaching the slow PBX")
        assert pbx.received == []  # it sits in the PBX's 1.5 s delay: SIGTERM lands mid-delivery
        first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), 30) == 0
        log = (tmp_path / "first.log").read_text()
        assert logged(log, event="shutting down") and logged(log, event="bridge stopped"), log
        delivered_by_first = len(pbx.received)
        assert delivered_by_first >= 1  # what was in flight was finished, not dropped
        second = await processes.start(config, tmp_path / "second.log")
        try:
            await processes.wait_ready(second, tmp_path / "second.log", url=f"http://127.0.0.1:{port}/readyz")
            await pbx.wait_for(6, timeout=30)
            await asyncio.sleep(2.0)
        finally:
            assert await processes.stop(second) == 0
        mdr_ids = [d["mdr_id"] for d in pbx.received]
        assert sorted(mdr_ids) == sorted(f"mdr1-drain-{n}" for n in range(6))  # each once
    finally:
        await processes.stop(first)
        await pbx.stop()
