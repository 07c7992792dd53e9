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


class MessageSender:
    def __init__(self, hop: NextHop, *, transport: Literal["udp", "tcp", "auto"], timeout_s: float,
                 credentials: Credentials | None) -> None:
        self._hop = hop
        self._transport = transport
        self._timeout = timeout_s
        self._credentials = credentials
        self._last_challenge: SipMessage | None = None

    async def send(self, out: Outgoing) -> Result:
        """The final answer. The last challenge answered is reused (its nonce stays valid for a
        while at most proxies), which saves a round trip per text; a challenge to that, e.g. a
        stale nonce, is answered once more, and a challenge after that means bad credentials."""
        call_id, tag = secrets.token_hex(12), new_tag()
        proto = await self._proto(out, call_id, tag)
        cached = self._authorization(self._last_challenge, out)
        answer = await self._attempt(out, proto, call_id, tag, cseq=1, auth=cached)
        if answer.status not in (401, 407) or self._credentials is None:
            return Result(answer, proto, challenged=False)
        self._last_challenge = answer
        auth = self._authorization(answer, out)
        if auth is None:
            return Result(answer, proto, challenged=False)
        return Result(await self._attempt(out, proto, call_id, tag, cseq=2, auth=auth), proto, challenged=True)

    async def _proto(self, out: Outgoing, call_id: str, tag: str) -> Proto:
        if self._transport != "auto":
            return self._transport
        size = len(self._build(out, "udp", ("0.0.0.0", 0), new_branch(), call_id, tag, 2, None).encode())
        return "tcp" if size + 200 > UDP_LIMIT else "udp"  # 200: room for an Authorization header

    def _authorization(self, answer: SipMessage | None, out: Outgoing) -> tuple[str, str] | None:
        if answer is None or self._credentials is None:
            return None
        name = "WWW-Authenticate" if answer.status == 401 else "Proxy-Authenticate"
        value = answer.header(name)
        if value is None:
            return None
        try:
            challenge = digest.parse_challenge(value)
        except digest.UnsupportedChallenge:
            return None
        header = "Authorization" if answer.status == 401 else "Proxy-Authorization"
        return header, digest.authorization(challenge, method="MESSAGE", uri=_uri(out.to_user, out.domain),
                                            username=self._credentials.username,
                                            password=self._credentials.password)

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
