"""HTTP digest for SIP (RFC 3261 §22, RFC 2617 / RFC 7616): answer one 401/407 challenge.

MD5 and SHA-256 (RFC 8760), with `qop=auth` when the challenge offers it and without qop when it
does not (Kamailio's `proxy_challenge(realm, "0")`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)')
HASHES = {"md5": hashlib.md5, "sha-256": hashlib.sha256}


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None


class UnsupportedChallenge(ValueError):
    """A challenge we cannot answer (another scheme, an unknown algorithm, no nonce)."""


def parse_challenge(value: str) -> Challenge:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise UnsupportedChallenge(f"auth scheme {scheme!r} is not Digest")
    params = {k.lower(): v.strip('"') for k, v in _PARAM.findall(rest)}
    algorithm = params.get("algorithm", "MD5")
    if algorithm.lower() not in HASHES or "nonce" not in params:
        raise UnsupportedChallenge(f"digest algorithm {algorithm!r} or its nonce is not usable")
    qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(params.get("realm", ""), params["nonce"], algorithm, qop, params.get("opaque"))


def _h(algorithm: str, text: str) -> str:
    return HASHES[algorithm.lower()](text.encode("utf-8")).hexdigest()


def authorization(challenge: Challenge, *, method: str, uri: str, username: str, password: str,
                  cnonce: str | None = None, nc: int = 1) -> str:
    """The `Authorization` / `Proxy-Authorization` value answering `challenge`. With qop, `nc` is
    the number of requests sent with this nonce so far, this one included (RFC 7616 §3.4): a
    nonce reused with a count already seen is a replay to a server that counts."""
    if not 1 <= nc <= 0xFFFFFFFF:
        raise ValueError(f"nonce count {nc} is out of range")
    alg = challenge.algorithm
    ha1 = _h(alg, f"{username}:{challenge.realm}:{password}")
    ha2 = _h(alg, f"{method}:{uri}")
    fields = [f'username="{username}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"', f'uri="{uri}"']
    if "auth" in challenge.qop:
        cnonce = cnonce or secrets.token_hex(8)
        count = f"{nc:08x}"
        response = _h(alg, f"{ha1}:{challenge.nonce}:{count}:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        response = _h(alg, f"{ha1}:{challenge.nonce}:{ha2}")
    fields += [f'response="{response}"', f"algorithm={alg}"]
    if challenge.opaque is not None:
        fields.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(fields)


def verify(header: str, *, method: str, uri: str, password: str, realm: str, nonce: str) -> bool:
    """Check an `Authorization` header a peer sent (the SIP intake's side of the same maths). The
    credentials' `uri` must be the request's own Request-URI (RFC 3261 §22.4), so credentials seen
    on one request cannot be replayed to text another number."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v.strip('"') for k, v in _PARAM.findall(rest)}
    if scheme.lower() != "digest" or params.get("nonce") != nonce or params.get("realm") != realm:
        return False
    if params.get("uri", "").strip() != uri.strip():
        return False
    alg = params.get("algorithm", "MD5")
    if alg.lower() not in HASHES:
        return False
    ha1 = _h(alg, f"{params.get('username', '')}:{realm}:{password}")
    ha2 = _h(alg, f"{method}:{params.get('uri', '')}")
    if params.get("qop") == "auth":
        expected = _h(alg, f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}")
    else:
        expected = _h(alg, f"{ha1}:{nonce}:{ha2}")
    return secrets.compare_digest(expected, params.get("response", ""))
