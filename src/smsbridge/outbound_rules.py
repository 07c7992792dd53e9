"""Outbound rules, the way PortSIP applies them: pure functions, deny by default.

`decide` turns a PBX request into a `DispatchRequest` or raises `Refused` with a reason code
and a sentence an operator can act on. Nothing here does I/O.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import quote

from smsbridge.config import OutboundRule, OutboundSettings, Settings, SmsConfig
from smsbridge.errors import InvalidNumber, PermanentError
from smsbridge.events import DispatchRequest, OutboundRequest
from smsbridge.numbers import foreign_country, to_e164
from smsbridge.redact import quote as quoted
from smsbridge.segments import body_info, replace_smart_punctuation


class Refused(PermanentError):
    """The request breaks a rule: never retried, answered with a `failed` status."""


def choose_config(request: OutboundRequest, settings: Settings) -> SmsConfig:
    if request.config_id:
        config = settings.sms_config(request.config_id)
        if config is None or config.tenant != request.tenant:
            raise Refused(f"tenant {quoted(request.tenant)} has no SMS configuration {quoted(request.config_id)}",
                          code="unknown_config")
        return config
    configs = settings.configs_of(request.tenant)
    if not configs:
        raise Refused(f"tenant {quoted(request.tenant)} has no SMS configuration", code="unknown_tenant")
    if len(configs) == 1:
        return configs[0]
    if request.from_did:
        for config in configs:
            if _e164_or_none(request.from_did) in config.dids:
                return config
    raise Refused(f"tenant '{request.tenant}' has several SMS configurations: name config_id or from_did",
                  code="ambiguous_config")


def find_rule(extension: str, config: SmsConfig, rules: list[OutboundRule]) -> OutboundRule:
    for rule in rules:
        if rule.config == config.id and ("*" in rule.extensions or extension in rule.extensions):
            return rule
    raise Refused(f"extension {extension} may not send texts through configuration '{config.id}' "
                  "(no outbound rule allows it)", code="not_allowed")


def choose_sender(request: OutboundRequest, config: SmsConfig, rule: OutboundRule) -> str:
    """Explicit DID if the rule gives it, else the rule's default, else the Sender ID, else the DID."""
    allowed = rule.dids or config.dids
    if request.from_did:
        did = _number(request.from_did, "from_did")
        if did not in allowed:
            raise Refused(f"extension {request.from_extension} may not send from {did}; allowed: "
                          f"{', '.join(allowed)}", code="from_did_not_allowed")
        return did
    if rule.default_did:
        return rule.default_did
    if config.sender_id:
        return config.sender_id
    return allowed[0]


def check_destination(to: str, rule: OutboundRule) -> str:
    number = _number(to, "destination")
    country = foreign_country(number)
    if country is not None:  # refused before it costs a Flowroute attempt
        raise Refused(f"destination {number} is in {country}: Flowroute sends only to the US and Canada",
                      code="destination_not_us_ca")
    if rule.destinations and not any(fnmatchcase(number, pattern) for pattern in rule.destinations):
        raise Refused(f"destination {number} is not allowed for extension senders of rule "
                      f"'{rule.name or rule.config}' (allowed: {', '.join(rule.destinations)})",
                      code="destination_not_allowed")
    return number


def prepare_body(request: OutboundRequest, options: OutboundSettings,
                 rehosted: bool = False) -> tuple[str, int, str]:
    """The body to send, its segment count and encoding; refuses what Flowroute would refuse.
    `rehosted`: the bridge fetches the media itself, so a PBX may name any http(s) URL it reaches."""
    body = replace_smart_punctuation(request.body) if options.replace_smart_punctuation else request.body
    for url in request.media_urls:
        schemes = ("https://", "http://") if rehosted else ("https://",)
        if not url.startswith(schemes):
            what = "an http(s) URL" if rehosted else "a public https URL"
            raise Refused(f"media URL must be {what}: {url[:200]}", code="media_not_https")
    if len(request.media_urls) > options.max_media:
        raise Refused(f"too many media: {len(request.media_urls)} (at most {options.max_media})",
                      code="too_many_media")
    if not body.strip() and not request.media_urls:
        raise Refused("the message has no text and no media", code="empty")
    info = body_info(body)
    if not request.media_urls and info.segments > options.max_segments:
        raise Refused(f"message too long: {info.segments} segments ({info.units} {info.encoding} characters), "
                      f"at most {options.max_segments}", code="too_long")
    return body, info.segments, info.encoding


def dlr_callback(settings: Settings, config: SmsConfig, client_message_id: str) -> str | None:
    if not settings.flowroute.request_dlrs:
        return None
    return f"{settings.webhook_url(config)}?cmid={quote(client_message_id, safe='')}"


def decide(request: OutboundRequest, settings: Settings) -> DispatchRequest:
    config = choose_config(request, settings)
    rule = find_rule(request.from_extension, config, settings.outbound_rules)
    sender = choose_sender(request, config, rule)
    to = check_destination(request.to, rule)
    body, segments, encoding = prepare_body(request, settings.outbound, rehosted=settings.media.store != "off")
    return DispatchRequest(
        tenant=request.tenant, config_id=config.id, client_message_id=request.client_message_id,
        from_extension=request.from_extension, from_=sender, to=to, body=body,
        media_urls=request.media_urls, is_mms=bool(request.media_urls), segments=segments,
        encoding=encoding,  # type: ignore[arg-type]
        dlr_callback=dlr_callback(settings, config, request.client_message_id),
    )


def _number(raw: str, what: str) -> str:
    try:
        return to_e164(raw)
    except InvalidNumber as exc:
        raise Refused(f"{what} {exc.reason}", code="invalid_number") from None


def _e164_or_none(raw: str) -> str | None:
    try:
        return to_e164(raw)
    except InvalidNumber:
        return None
