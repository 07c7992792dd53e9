"""Client transactions for non-INVITE requests over UDP and TCP to one next hop (RFC 3261 §17.1.2).

UDP: the request is retransmitted from T1 doubling up to T2 until a final answer or the timeout
(Timer F). TCP: one connection, reused, framed by Content-Length. Answers are matched to their
transaction by the Via branch.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from smsbridge.sip.message import SipMessage, SipParseError, StreamFramer, param, parse

T1 = 0.5
T2 = 4.0
Proto = Literal["udp", "tcp"]


class TransportError(ConnectionError):
    """The next hop could not be reached or dropped the connection."""


def branch_of(message: SipMessage) -> str | None:
    via = message.header("Via")
    return None if via is None else param(via, "branch")


class _Pending:
    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[SipMessage]] = {}

    def expect(self, branch: str) -> asyncio.Future[SipMessage]:
        future: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self.waiting[branch] = future
        return future

    def answer(self, message: SipMessage) -> None:
        branch = branch_of(message)
        future = self.waiting.get(branch or "")
        if future is not None and not future.done() and message.is_response and message.status >= 200:
            future.set_result(message)

    def fail_all(self, exc: Exception) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, pending: _Pending) -> None:
        self.pending = pending

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        with contextlib.suppress(SipParseError, ValueError):
            self.pending.answer(parse(data))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        self.pending.fail_all(TransportError(f"UDP error: {exc}"))


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, pending: _Pending) -> None:
        self.pending = pending
        self.framer = StreamFramer()
        self.closed = False

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.framer.feed(data):
                self.pending.answer(message)
        except (SipParseError, ValueError) as exc:
            self.pending.fail_all(TransportError(f"unreadable answer on TCP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending.fail_all(TransportError("the next hop closed the TCP connection"))


class NextHop:
    """The UDP socket and the TCP connection to one `host:port`, opened when first needed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_pending = _Pending()
        self._tcp: asyncio.Transport | None = None
        self._tcp_protocol: _TcpProtocol | None = None
        self._tcp_pending = _Pending()
        self._lock = asyncio.Lock()

    async def local_address(self, proto: Proto) -> tuple[str, int]:
        transport = await (self._udp_transport() if proto == "udp" else self._tcp_transport())
        host, port = transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def request(self, proto: Proto, data: bytes, branch: str, timeout: float) -> SipMessage:
        """The final answer to the request carrying `branch`; TimeoutError after `timeout` s."""
        if proto == "udp":
            return await self._udp_request(data, branch, timeout)
        return await self._tcp_request(data, branch, timeout)

    async def _udp_request(self, data: bytes, branch: str, timeout: float) -> SipMessage:
        transport = await self._udp_transport()
        future = self._udp_pending.expect(branch)
        try:
            async with asyncio.timeout(timeout):
                interval = T1
                while True:
                    transport.sendto(data)
                    done, _ = await asyncio.wait({future}, timeout=interval)
                    if done:
                        return future.result()
                    interval = min(interval * 2, T2)
        finally:
            self._udp_pending.waiting.pop(branch, None)

    async def _tcp_request(self, data: bytes, branch: str, timeout: float) -> SipMessage:
        transport = await self._tcp_transport()
        future = self._tcp_pending.expect(branch)
        try:
            transport.write(data)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._tcp_pending.waiting.pop(branch, None)

    async def _udp_transport(self) -> asyncio.DatagramTransport:
        async with self._lock:
            if self._udp is None or self._udp.is_closing():
                loop = asyncio.get_running_loop()
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self._udp_pending), remote_addr=(self.host, self.port))
            return self._udp

    async def _tcp_transport(self) -> asyncio.Transport:
        async with self._lock:
            if self._tcp is None or self._tcp_protocol is None or self._tcp_protocol.closed:
                loop = asyncio.get_running_loop()
                try:
                    self._tcp, self._tcp_protocol = await loop.create_connection(
                        lambda: _TcpProtocol(self._tcp_pending), self.host, self.port)
                except OSError as exc:
                    raise TransportError(f"TCP connection to {self.host}:{self.port} failed: {exc}") from None
            return self._tcp

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
