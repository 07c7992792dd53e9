"""A small SIP phone for tests, written apart from the bridge's own SIP code so that a bug there
cannot hide itself: it registers (with digest) and answers MESSAGEs on UDP and TCP, keeping
every request it received with its raw body bytes and the transport it came by."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import cast

AUTH_PARAM = re.compile(r'(\w+)="?([^",]*)"?')


@dataclass(frozen=True)
class Received:
    start: str
    headers: dict[str, str]
    body: bytes
    proto: str


def _parse(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    length = int(headers.get("content-length", headers.get("l", "0")))
    return lines[0], headers, body[:length]


@dataclass
class Phone:
    user: str
    password: str
    registrar_port: int
    domain: str = "sms.test"
    status: int = 200  # the answer to every MESSAGE
    delay_s: float = 0.0  # a slow phone: how long it takes to answer a MESSAGE
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _answers: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    _transactions: set[tuple[str, str]] = field(default_factory=set)

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.port = port
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=("127.0.0.1", port))
        self._tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def register(self, expires: int = 300) -> int:
        """REGISTER over UDP, answering the 401 once; the registrar's final status."""
        call_id, cseq = secrets.token_hex(8), 1
        status, headers = await self._register_once(call_id, cseq, expires, None)
        if status == 401:
            status, _ = await self._register_once(call_id, cseq + 1, expires, self._auth(headers))
        return status

    async def send(self, to_user: str, text: str) -> int:
        """A MESSAGE typed on the phone, over UDP through the registrar (which challenges with 407)."""
        call_id = secrets.token_hex(8)
        status, headers = await self._message_once(call_id, 1, to_user, text, None)
        if status == 407:
            auth = self._digest(headers["proxy-authenticate"], "MESSAGE", f"sip:{to_user}@{self.domain}")
            status, _ = await self._message_once(call_id, 2, to_user, text, f"Proxy-Authorization: {auth}")
        return status

    async def _message_once(self, call_id: str, cseq: int, to_user: str, text: str,
                            auth: str | None) -> tuple[int, dict[str, str]]:
        body = text.encode()
        lines = [f"MESSAGE sip:{to_user}@{self.domain} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
                 "Max-Forwards: 70", f"From: <sip:{self.user}@{self.domain}>;tag={call_id}",
                 f"To: <sip:{to_user}@{self.domain}>", f"Call-ID: {call_id}", f"CSeq: {cseq} MESSAGE",
                 "Content-Type: text/plain;charset=UTF-8"]
        if auth:
            lines.append(auth)
        lines.append(f"Content-Length: {len(body)}")
        return await self._transact(("\r\n".join(lines) + "\r\n\r\n").encode() + body, call_id)

    async def _transact(self, data: bytes, call_id: str) -> tuple[int, dict[str, str]]:
        assert self._udp is not None
        self._udp.sendto(data, ("127.0.0.1", self.registrar_port))
        while True:
            start, headers, _ = _parse(await asyncio.wait_for(self._answers.get(), 30))
            status = int(start.split(" ")[1])
            if status >= 200 and headers.get("call-id") == call_id:
                return status, headers

    def _digest(self, challenge: str, method: str, uri: str) -> str:
        params = dict(AUTH_PARAM.findall(challenge))
        ha1 = hashlib.md5(f"{self.user}:{params['realm']}:{self.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
        response = hashlib.md5(f"{ha1}:{params['nonce']}:{ha2}".encode()).hexdigest()
        return (f'Digest username="{self.user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                f'uri="{uri}", response="{response}"')

    async def unregister(self) -> int:
        return await self.register(expires=0)

    def texts(self) -> list[bytes]:
        return [r.body for r in self.received]

    def _auth(self, headers: dict[str, str]) -> str:
        return self._digest(headers["www-authenticate"], "REGISTER", f"sip:{self.domain}")

    async def _register_once(self, call_id: str, cseq: int, expires: int,
                             auth: str | None) -> tuple[int, dict[str, str]]:
        lines = [f"REGISTER sip:{self.domain} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
                 "Max-Forwards: 70", f"From: <sip:{self.user}@{self.domain}>;tag={call_id}",
                 f"To: <sip:{self.user}@{self.domain}>", f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER",
                 f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>", f"Expires: {expires}"]
        if auth:
            lines.append(f"Authorization: {auth}")
        lines.append("Content-Length: 0")
        return await self._transact(("\r\n".join(lines) + "\r\n\r\n").encode(), call_id)

    def handle(self, data: bytes, proto: str) -> bytes | None:
        """Record a request and build the answer; keep a response for `register`."""
        start, headers, body = _parse(data)
        if start.startswith("SIP/2.0"):
            self._answers.put_nowait(data)
            return None
        status = self.status
        if start.startswith("MESSAGE"):
            transaction = (_vias(data)[0], headers["cseq"])
            if transaction in self._transactions:
                return None  # the proxy's retransmission while we are slow: one request, one answer
            self._transactions.add(transaction)
            self.received.append(Received(start, headers, body, proto))
        else:
            status = 405
        to = headers["to"] if ";tag=" in headers["to"] else f"{headers['to']};tag={secrets.token_hex(4)}"
        lines = [f"SIP/2.0 {status} {'OK' if status == 200 else 'Test'}"]
        lines += [f"Via: {v}" for v in _vias(data)]
        lines += [f"From: {headers['from']}", f"To: {to}", f"Call-ID: {headers['call-id']}",
                  f"CSeq: {headers['cseq']}", "Content-Length: 0"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                _, headers, _ = _parse(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = self.handle(head + body, "tcp")
                if answer is not None:
                    await asyncio.sleep(self.delay_s)
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _vias(data: bytes) -> list[str]:
    head = data.partition(b"\r\n\r\n")[0].decode()
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() in ("via", "v")]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        answer = self.phone.handle(data, "udp")
        if answer is not None and self.transport is not None:
            asyncio.get_running_loop().call_later(self.phone.delay_s, self.transport.sendto, answer, addr)
