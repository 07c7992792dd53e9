"""Send one MESSAGE (RFC 3428) through a next hop and return its final answer, answering one
digest challenge. No Contact (RFC 3428 §4); the body is UTF-8 text/plain."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from smsbridge.sip import digest
from smsbridge.sip.message import SipMessage, new_branch, new_tag
from smsbridge.sip.transport import NextHop, Proto

UDP_LIMIT = 1300  # RFC 3261 §18.1.1: a larger request with an unknown path MTU goes by TCP
ID_HEADER = "X-Smsbridge-Id"
CONTENT_TYPE = "text/plain;charset=UTF-8"
MAX_NONCE_COUNT = 0xFFFFFFFF


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Outgoing:
    to_user: str
    from_user: str
    domain: str
    body: str
    message_id: str  # the header a PBX can use to drop repeats


@dataclass(frozen=True)
class Result:
    answer: SipMessage
    proto: Proto
    challenged: bool  # the final answer followed a digest challenge (a second one means bad credentials)


@dataclass
class _Nonce:
    """A challenge answered once and reused for the next texts, with the count of requests sent
    with its nonce so far (qop's `nc`, RFC 7616 §3.4: each use counts, so a proxy that counts,
    e.g. Kamailio with `nonce_count`, never sees a replay)."""

    header: str  # "Authorization" or "Proxy-Authorization"
    challenge: digest.Challenge
    uses: int = 0

    def next_use(self) -> int:
        self.uses += 1  # taken before the request goes out: concurrent texts get distinct counts
        return self.uses


class MessageSender:
    def __init__(self, hop: NextHop, *, transport: Literal["udp", "tcp", "auto"], timeout_s: float,
                 credentials: Credentials | None) -> None:
        self._hop = hop
        self._transport = transport
        self._timeout = timeout_s
        self._credentials = credentials
        self._nonce: _Nonce | None = None

    async def send(self, out: Outgoing) -> Result:
        """The final answer. The nonce of the last challenge answered is reused with a nonce count
        one higher each time (proxies keep a nonce valid for a while; this saves a round trip per
        text). A challenge to a reused nonce (stale, counted out, bound to another Call-ID) drops
        it and the new challenge is answered once; a challenge to that means bad credentials."""
        call_id, tag = secrets.token_hex(12), new_tag()
        proto = await self._proto(out, call_id, tag)
        cached = self._nonce
        if cached is not None and cached.uses >= MAX_NONCE_COUNT:
            cached = self._nonce = None  # counted out (8 hex digits): a fresh challenge
        auth = None if cached is None else self._authorization(cached, out)
        answer = await self._attempt(out, proto, call_id, tag, cseq=1, auth=auth)
        if answer.status not in (401, 407) or self._credentials is None:
            return Result(answer, proto, challenged=False)
        fresh = self._challenge(answer)
        if fresh is None:
            return Result(answer, proto, challenged=False)
        self._nonce = fresh
        answer = await self._attempt(out, proto, call_id, tag, cseq=2, auth=self._authorization(fresh, out))
        if answer.status in (401, 407) and self._nonce is fresh:
            self._nonce = None  # refused twice: start from a fresh challenge next time
        return Result(answer, proto, challenged=True)

    async def _proto(self, out: Outgoing, call_id: str, tag: str) -> Proto:
        if self._transport != "auto":
            return self._transport
        size = len(self._build(out, "udp", ("0.0.0.0", 0), new_branch(), call_id, tag, 2, None).encode())
        return "tcp" if size + 200 > UDP_LIMIT else "udp"  # 200: room for an Authorization header

    @staticmethod
    def _challenge(answer: SipMessage) -> _Nonce | None:
        value = answer.header("WWW-Authenticate" if answer.status == 401 else "Proxy-Authenticate")
        if value is None:
            return None
        try:
            challenge = digest.parse_challenge(value)
        except digest.UnsupportedChallenge:
            return None
        return _Nonce("Authorization" if answer.status == 401 else "Proxy-Authorization", challenge)

    def _authorization(self, nonce: _Nonce, out: Outgoing) -> tuple[str, str]:
        assert self._credentials is not None
        return nonce.header, digest.authorization(nonce.challenge, method="MESSAGE", uri=_uri(out.to_user, out.domain),
                                                  username=self._credentials.username,
                                                  password=self._credentials.password, nc=nonce.next_use())

    async def _attempt(self, out: Outgoing, proto: Proto, call_id: str, tag: str, *, cseq: int,
                       auth: tuple[str, str] | None) -> SipMessage:
        local = await self._hop.local_address(proto)
        branch = new_branch()
        request = self._build(out, proto, local, branch, call_id, tag, cseq, auth)
        return await self._hop.request(proto, request.encode(), branch, self._timeout)

    @staticmethod
    def _build(out: Outgoing, proto: Proto, local: tuple[str, int], branch: str, call_id: str, tag: str,
               cseq: int, auth: tuple[str, str] | None) -> SipMessage:
        uri = _uri(out.to_user, out.domain)
        headers = [
            ("Via", f"SIP/2.0/{proto.upper()} {local[0]}:{local[1]};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{_uri(out.from_user, out.domain)}>;tag={tag}"),
            ("To", f"<{uri}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} MESSAGE"),
            ("Content-Type", CONTENT_TYPE),
            (ID_HEADER, out.message_id),
            ("User-Agent", "smsbridge"),
        ]
        if auth is not None:
            headers.append(auth)
        return SipMessage(f"MESSAGE {uri} SIP/2.0", headers, out.body.encode("utf-8"))


def _uri(user: str, domain: str) -> str:
    return f"sip:{user}@{domain}"
