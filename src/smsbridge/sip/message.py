"""SIP requests and responses as plain values: build the bytes, parse the bytes, frame a stream.

Only what MESSAGE needs (RFC 3261 §7): a start line, headers (compact forms expanded), a body
whose length is `Content-Length` in bytes. Header names are kept as sent and looked up without
regard to case.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

CRLF = "\r\n"
COMPACT = {"f": "From", "t": "To", "i": "Call-ID", "v": "Via", "l": "Content-Length", "c": "Content-Type",
           "m": "Contact", "k": "Supported", "s": "Subject"}
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024  # what one UDP datagram can carry; a text is far smaller (limits.BODY_CHARS)


class SipParseError(ValueError):
    """Bytes that are not a SIP message we can read."""


class BodyTooLarge(SipParseError):
    """A stream announced a body beyond `MAX_BODY_BYTES`: answered 413 from its headers, then closed."""

    def __init__(self, head: SipMessage) -> None:
        super().__init__("Content-Length beyond the limit")
        self.head = head


@dataclass(frozen=True)
class SipMessage:
    start: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def is_response(self) -> bool:
        return self.start.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        """The status code of a response (0 for a request)."""
        if not self.is_response:
            return 0
        return int(self.start.split(" ", 2)[1])

    @property
    def reason(self) -> str:
        parts = self.start.split(" ", 2)
        return parts[2] if self.is_response and len(parts) == 3 else ""

    @property
    def method(self) -> str:
        return "" if self.is_response else self.start.split(" ", 1)[0]

    @property
    def request_uri(self) -> str:
        parts = self.start.split(" ")
        return "" if self.is_response or len(parts) < 2 else parts[1]

    def encode(self) -> bytes:
        lines = [self.start] + [f"{k}: {v}" for k, v in self.headers if k.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + self.body


def new_branch() -> str:
    """A Via branch: the RFC 3261 magic cookie plus randomness, unique per transaction."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    return secrets.token_hex(6)


def parse(data: bytes, *, whole: bool = True) -> SipMessage:
    """One whole message (a UDP datagram, or a frame cut by `StreamFramer`); `whole=False` reads
    only the headers of a frame whose body has not arrived yet."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SipParseError("no blank line after the headers")
    try:
        lines = head.decode("utf-8").split(CRLF)
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    start, headers = lines[0].strip(), _headers(lines[1:])
    if not (start.startswith("SIP/2.0 ") or start.endswith(" SIP/2.0")):
        raise SipParseError("not a SIP start line")
    message = SipMessage(start, headers, body)
    length = message.header("Content-Length")
    if length is not None:
        size = _length(length)
        if whole and len(body) < size:  # RFC 3261 18.3: a datagram cut short is a bad request
            raise SipParseError("body shorter than Content-Length")
        message = SipMessage(start, headers, body[:size])
    return message


def salvage(data: bytes) -> SipMessage | None:
    """What can be read of a request `parse` refused (a bad header line, a short body), enough to
    answer it 400; None when even that cannot be said (no request line, no Via, Call-ID or CSeq)."""
    head = data.partition(b"\r\n\r\n")[0].decode("utf-8", "replace").split(CRLF)
    start = head[0].strip()
    if not start.endswith(" SIP/2.0") or start.startswith("SIP/2.0"):
        return None
    headers = [(COMPACT.get(name.strip().lower(), name.strip()), value.strip())
               for name, colon, value in (line.partition(":") for line in head[1:]) if colon]
    message = SipMessage(start, headers)
    return message if all(message.header(h) for h in ("Via", "Call-ID", "CSeq")) else None


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and headers:  # folded continuation of the previous header
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without a colon: {line[:40]!r}")
        name = name.strip()
        headers.append((COMPACT.get(name.lower(), name), value.strip()))
    return headers


def _length(value: str) -> int:
    try:
        length = int(value)
    except ValueError:
        raise SipParseError("Content-Length is not a number") from None
    if length < 0:
        raise SipParseError("negative Content-Length")
    return length


class StreamFramer:
    """Cuts a TCP byte stream into messages by the blank line and `Content-Length`."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[SipMessage]:
        self._buffer += data
        found: list[SipMessage] = []
        while True:
            self._buffer = self._buffer.lstrip(b"\r\n")  # keep-alive CRLFs between messages
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise SipParseError("headers too long")
                return found
            head = parse(self._buffer[: end + 4], whole=False)
            size = _length(head.header("Content-Length") or "0")
            if size > MAX_BODY_BYTES:
                raise BodyTooLarge(head)
            total = end + 4 + size
            if len(self._buffer) < total:
                return found
            found.append(parse(self._buffer[:total]))
            self._buffer = self._buffer[total:]


def param(header: str, name: str) -> str | None:
    """A `;name=value` parameter of a header such as Via, From or To."""
    for part in header.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip()
    return None


def uri_user(uri_or_address: str) -> str:
    """The user part of `sip:user@host`, also inside `"Name" <sip:user@host>;tag=x`."""
    text = uri_or_address
    if "<" in text:
        text = text[text.index("<") + 1: text.index(">")] if ">" in text else text[text.index("<") + 1:]
    text = text.split(";", 1)[0]
    scheme, _, rest = text.partition(":")
    if scheme.strip().lower() not in ("sip", "sips") or "@" not in rest:
        return ""
    return rest.split("@", 1)[0]
