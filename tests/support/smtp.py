"""A real SMTP server (aiosmtpd) on loopback for tests: STARTTLS required, AUTH required, with a
self-signed certificate made by openssl, and scripted refusals (e.g. 451 once, or 550)."""

from __future__ import annotations

import email
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.ports import free_port

USER, PASSWORD = "bridge", "mail-secret"


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test mail server's certificate", pytrace=False)
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


@dataclass
class Handler:
    mails: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    script: list[str] = field(default_factory=list)  # answers to DATA before accepting, e.g. "451 busy"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.script:
            return self.script.pop(0)
        self.mails.append(email.message_from_bytes(envelope.original_content or envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    # handled=False on failure: aiosmtpd then answers 535 (with True it answers nothing at all)
    return AuthResult(success=True) if ok else AuthResult(success=False, handled=False)


@dataclass
class MailServer:
    directory: Path
    handler: Handler = field(default_factory=Handler)
    port: int = 0
    cert: Path | None = None
    _controller: Controller | None = None

    def start(self) -> None:
        self.cert, key = self_signed(self.directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, tls_context=context,
                                      require_starttls=True, authenticator=authenticator, auth_required=True)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[MailServer]:
    """A real SMTP server (aiosmtpd, STARTTLS and AUTH) on loopback for one test."""
    server = MailServer(tmp_path)
    server.start()
    yield server
    server.stop()
