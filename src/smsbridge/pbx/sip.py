"""SIP delivery: each text as SIP MESSAGE (RFC 3428) to `sip:<extension>@<domain>` via a next hop.

A text longer than the target's body budget goes in numbered parts cut between graphemes, each
sent after the previous one's final answer. What an answer means is `sip.answers.classify`: 200 is
the phone's; 202 a relay took it (returned as the delivery state "accepted", not proof of a
phone); offline, timeouts and overload are retried by the delivery stage; 413/513 make the text
go again in parts half the size, once; a second digest challenge and any refusal are permanent.
Every part carries `X-Smsbridge-Id: <flowroute id>:<extension>:<i>/<n>`, the same on every retry,
so a PBX can drop a part it already has (a retry after part 2 failed sends part 1 again).
"""

from __future__ import annotations

from smsbridge.config import SipTarget
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, Media
from smsbridge.sip.answers import Answer, classify
from smsbridge.sip.split import MIN_BUDGET, split_text
from smsbridge.sip.transport import NextHop, TransportError
from smsbridge.sip.uac import Credentials, MessageSender, Outgoing, Result

DELIVERED = "delivered"
ACCEPTED = "accepted"


class _TooLarge(Exception):
    """The next hop refused a part as too large (413/513)."""


def compose(delivery: InboundDelivery) -> str:
    """The text a phone shows: the body, then one link per picture (a phone cannot show MMS)."""
    links = [_link(media) for media in delivery.media]
    return "\n".join([delivery.body, *links]) if delivery.body else "\n".join(links)


def _link(media: Media) -> str:
    return f"[{media.mime_type or 'attachment'}] {media.url}"


def sender_user(delivery: InboundDelivery, from_format: str) -> str:
    return f"{delivery.to}{delivery.from_}" if from_format == "did+sender" else delivery.from_


class SipAdapter:
    kind = "sip"

    def __init__(self, target: SipTarget) -> None:
        self._target = target
        self._hop = NextHop(target.host, target.port)
        credentials = None
        if target.username and target.password is not None:
            credentials = Credentials(target.username, target.password.reveal())
        self._sender = MessageSender(self._hop, transport=target.transport, timeout_s=target.timeout_s,
                                     credentials=credentials)

    async def deliver(self, delivery: InboundDelivery) -> str:
        """Send every part; return "delivered" or, when a relay answered 202 for any part, "accepted"."""
        text, budget = compose(delivery), self._target.body_budget_bytes
        try:
            return await self._send_parts(delivery, split_text(text, budget))
        except _TooLarge:
            smaller = max(MIN_BUDGET, budget // 2)
            try:
                return await self._send_parts(delivery, split_text(text, smaller))
            except _TooLarge:
                raise PermanentError(f"the SIP next hop refused parts of {smaller} bytes as too large",
                                     code="sip_too_large") from None

    async def _send_parts(self, delivery: InboundDelivery, parts: list[str]) -> str:
        state = DELIVERED
        for index, part in enumerate(parts, 1):
            outgoing = Outgoing(to_user=delivery.extension, from_user=sender_user(delivery, self._target.from_format),
                                domain=self._target.domain, body=part,
                                message_id=f"{delivery.idempotency_key}:{index}/{len(parts)}")
            if await self._send(outgoing) == ACCEPTED:
                state = ACCEPTED
        return state

    async def _send(self, outgoing: Outgoing) -> str:
        try:
            result = await self._sender.send(outgoing)
        except TimeoutError:
            raise RetryableError(f"no final SIP answer within {self._target.timeout_s:g} s") from None
        except (TransportError, OSError) as exc:
            raise RetryableError(f"SIP next hop unreachable: {exc}") from None
        return outcome(result)

    async def close(self) -> None:
        await self._hop.close()


def outcome(result: Result) -> str:
    """The delivery state for a final answer, or the error the delivery stage acts on."""
    status, reason = result.answer.status, result.answer.reason
    answer = classify(status)
    if answer is Answer.DELIVERED:
        return DELIVERED
    if answer is Answer.ACCEPTED:
        return ACCEPTED
    if answer is Answer.CHALLENGE:
        why = "challenged again: wrong credentials" if result.challenged else "challenged: no usable credentials"
        raise PermanentError(f"SIP {status} {reason}: {why}", code="sip_auth_failed")
    if answer is Answer.RESPLIT:
        raise _TooLarge()
    if answer is Answer.RETRY:
        raise RetryableError(f"SIP {status} {reason}", retry_after=None)
    raise PermanentError(f"SIP {status} {reason}", code=f"sip_{status}")
