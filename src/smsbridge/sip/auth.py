"""Which configured peer sent a MESSAGE to the intake: by source address and/or digest user.

Nonces are stateless (a timestamp and its HMAC under a key made at start-up), so any retry of a
challenged request can be checked without remembering the challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from smsbridge.config import SipIntakeSettings, SipPeer
from smsbridge.sip import digest
from smsbridge.sip.intake import Refusal, peer_for
from smsbridge.sip.message import SipMessage

NONCE_TTL_S = 300
_USERNAME = re.compile(r'username\s*=\s*"([^"]*)"')


class PeerAuth:
    def __init__(self, settings: SipIntakeSettings) -> None:
        self._settings = settings
        self._key = secrets.token_bytes(32)

    def check(self, message: SipMessage, source: str) -> SipPeer | Refusal:
        header = message.header("Proxy-Authorization") or message.header("Authorization")
        found = _USERNAME.search(header or "")
        username = found.group(1) if found else None
        peer = peer_for(self._settings.peers, source, username)
        if peer is None:
            if header is None and any(p.username and p.address in ("", source) for p in self._settings.peers):
                return self._challenge()
            return Refusal(403, "Forbidden")
        if not peer.username:
            return peer
        if header is None:
            return self._challenge()
        return peer if self._verified(header, message, peer) else Refusal(403, "Forbidden (credentials)")

    def _verified(self, header: str, message: SipMessage, peer: SipPeer) -> bool:
        nonce = re.search(r'nonce\s*=\s*"([^"]*)"', header)
        if nonce is None or not self._fresh(nonce.group(1)) or peer.password is None:
            return False
        return digest.verify(header, method=message.method, uri=message.request_uri,
                             password=peer.password.reveal(), realm=self._settings.realm, nonce=nonce.group(1))

    def _challenge(self) -> Refusal:
        value = f'Digest realm="{self._settings.realm}", nonce="{self._nonce()}", algorithm=MD5'
        return Refusal(407, "Proxy Authentication Required", (("Proxy-Authenticate", value),))

    def _nonce(self) -> str:
        stamp = str(int(time.time()))
        return f"{stamp}.{self._sign(stamp)}"

    def _fresh(self, nonce: str) -> bool:
        stamp, _, mac = nonce.partition(".")
        if not stamp.isdigit() or not hmac.compare_digest(mac, self._sign(stamp)):
            return False
        return time.time() - int(stamp) < NONCE_TTL_S

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]
