"""UDP retransmission and timeouts of the bridge's MESSAGE client, against loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from smsbridge.config import SipTarget
from smsbridge.errors import RetryableError
from smsbridge.events import InboundDelivery
from smsbridge.pbx.sip import SipAdapter


class LossyServer(asyncio.DatagramProtocol):
    """Answers 200 to every copy after the first `drop` datagrams, which it ignores (lost)."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.datagrams: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.datagrams.append(data)
        if len(self.datagrams) <= self.drop or self.transport is None:
            return
        head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
        keep = [line for line in head[1:] if line.split(b":")[0].lower() in (b"via", b"from", b"to", b"call-id",
                                                                                  b"cseq")]
        self.transport.sendto(b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0"]) + b"\r\n\r\n", addr)


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LossyServer, int]]:
    loop = asyncio.get_running_loop()
    protocol = LossyServer(drop=request.param)
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=("127.0.0.1", 0))
    yield protocol, transport.get_extra_info("sockname")[1]
    transport.close()


def adapter(port: int, timeout_s: float = 10.0) -> SipAdapter:
    return SipAdapter(SipTarget(tenant="acme", host="127.0.0.1", port=port, domain="pbx.test", transport="udp",
                                timeout_s=timeout_s))


def delivery() -> InboundDelivery:
    return InboundDelivery(tenant="acme", config_id="main", mdr_id="mdr2-r", from_="+12065550199", to="+12065550100",
                           extension="1001", body="over a lossy path", received_at=datetime.now(UTC))


@pytest.mark.parametrize("server", [1], indirect=True)
async def test_a_lost_request_is_retransmitted_unchanged(server: tuple[LossyServer, int]) -> None:
    protocol, port = server
    sip = adapter(port)
    try:
        assert await sip.deliver(delivery()) == "delivered"
    finally:
        await sip.close()
    assert len(protocol.datagrams) == 2 and protocol.datagrams[0] == protocol.datagrams[1]


@pytest.mark.parametrize("server", [1000], indirect=True)
async def test_no_answer_within_the_timeout_is_retryable(server: tuple[LossyServer, int]) -> None:
    protocol, port = server
    sip = adapter(port, timeout_s=1.2)
    try:
        with pytest.raises(RetryableError, match="no final SIP answer"):
            await sip.deliver(delivery())
    finally:
        await sip.close()
    assert len(protocol.datagrams) >= 2  # retransmitted (T1 0.5 s) before giving up
