"""The email for one text (pure): subject with sender, DID and extension; text and HTML parts;
pictures attached up to a cap and linked beyond it; a Message-ID derived from the text and the
extension, so the mail resent after a crash carries the same id and a mail client shows one."""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from smsbridge.events import InboundDelivery, Media


@dataclass(frozen=True)
class Attachment:
    media: Media
    data: bytes


def message_id(delivery: InboundDelivery) -> str:
    digest = hashlib.sha256(f"{delivery.mdr_id}:{delivery.extension}".encode()).hexdigest()[:32]
    return f"<{digest}@smsbridge>"


def subject(delivery: InboundDelivery) -> str:
    kind = "Picture message" if delivery.is_mms else "Text"
    return f"{kind} from {delivery.from_} to {delivery.to} (ext. {delivery.extension})"


def build(delivery: InboundDelivery, *, sender: str, recipient: str, attachments: list[Attachment],
          links: list[Media]) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, recipient, subject(delivery)
    mail["Message-ID"] = message_id(delivery)
    mail["Date"] = formatdate(delivery.received_at.timestamp(), localtime=False, usegmt=True)
    mail.set_content(_text(delivery, links))
    mail.add_alternative(_html(delivery, links), subtype="html")
    for number, attachment in enumerate(attachments, 1):
        maintype, _, subtype = (attachment.media.mime_type or "application/octet-stream").partition("/")
        mail.add_attachment(attachment.data, maintype=maintype, subtype=subtype or "octet-stream",
                            filename=attachment.media.file_name or f"picture-{number}")
    return mail


def _text(delivery: InboundDelivery, links: list[Media]) -> str:
    lines = [f"From: {delivery.from_}", f"To: {delivery.to} (extension {delivery.extension})", "", delivery.body]
    lines += [f"Attachment too large to attach, link: {m.url}" for m in links]
    return "\n".join(lines) + "\n"


def _html(delivery: InboundDelivery, links: list[Media]) -> str:
    body = html.escape(delivery.body).replace("\n", "<br>")
    anchors = "".join(f'<p><a href="{html.escape(m.url, quote=True)}">{html.escape(m.file_name or m.url)}</a></p>'
                      for m in links)
    return (f"<html><body><p>From: {html.escape(delivery.from_)}<br>To: {html.escape(delivery.to)} "
            f"(extension {html.escape(delivery.extension)})</p><p>{body}</p>{anchors}</body></html>")
