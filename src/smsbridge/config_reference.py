"""Render docs/configuration.md from the settings Structs: `python -m smsbridge.config_reference`.

Types and defaults come from the Structs themselves (msgspec's type information); what each key
means comes from `MEANING` below. A test regenerates the page and compares, and fails when a key
has no meaning written or a meaning names a key that no longer exists, so the reference can
neither drift from the code nor miss a key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
from msgspec import inspect

from smsbridge.config import Settings

MEANING: dict[str, str] = {
    "drain_timeout_s": "On SIGTERM, how long in-flight messages may take to finish before they are cancelled "
                       "(unacked, so the broker redelivers them).",
    "broker.urls": "RabbitMQ URLs, one per cluster node; the connection moves to the next one when a node is down. "
                   "`amqps://` uses TLS (`cafile`, `certfile`, `keyfile` in the query).",
    "broker.prefix": "The start of every exchange and queue name the bridge declares (`<prefix>.requests`, "
                     "`<prefix>.inbound`, `<prefix>.dead-letters`, ...): several bridges can share a broker.",
    "broker.prefetch": "Messages each consumer holds at once: the concurrency of every stage.",
    "broker.publish_timeout_s": "How long a publish waits for the broker's confirm before it counts as failed "
                                "(a webhook then gets 503).",
    "broker.delivery_limit": "Quorum queues' `x-delivery-limit`: a message redelivered this often (e.g. one that "
                             "crashes its process every time) is dead-lettered by the broker.",
    "broker.quorum_initial_group_size": "Quorum queues' `x-quorum-initial-group-size`: replicas of each queue "
                                        "when it is first declared (the broker uses every node if it has fewer; "
                                        "an existing queue keeps its replicas). See operations: several hosts.",
    "broker.queue_leader_locator": "Quorum queues' `x-queue-leader-locator` (RabbitMQ 3.10+): `balanced` spreads "
                                   "leaders over the nodes, `client-local` puts each on the declaring node, "
                                   "`\"\"` declares none (a policy's `queue-leader-locator` decides).",
    "broker.hand_back_hold_s": "With several nodes: after its connection to RabbitMQ comes back (unless the node's "
                               "process died), the inbound stage delivers the texts it routes this much later, so "
                               "that any the broker had sent the lost connection, handed back when the cluster "
                               "declares that node down, go first. At least half of the nodes' `net_ticktime` plus "
                               "2 s (10 s covers 16 s); 0 turns it off. See operations: several hosts.",
    "receiver.host": "Address the receiver (webhooks, history API, probes, metrics) listens on.",
    "receiver.port": "Its port; 0 picks a free one.",
    "receiver.public_url": "The URL Flowroute reaches the receiver at; webhook and `dlr_callback` URLs start with it.",
    "receiver.max_body_bytes": "Webhook bodies above this size are refused with 413.",
    "receiver.allowed_source_ips": "If not empty, only these source addresses may post webhooks (403 otherwise).",
    "receiver.read_timeout_s": "Seconds a client has to send a request's headers, and again its body (408); "
                               "then the connection is closed.",
    "retry.*.max_attempts": "Tries of a message at this stage before it is dead-lettered.",
    "retry.*.max_age_s": "Seconds since the message was first seen after which it is dead-lettered instead of "
                         "retried.",
    "retry.*.base_delay_s": "The first retry's delay; each later one doubles, with jitter.",
    "retry.*.max_delay_s": "The longest delay between two tries (a `Retry-After` from the peer still wins).",
    "logging.level": "Lowest level written.",
    "logging.format": "`json` (one object per line), `console` (for people), or `auto` (console on a terminal, "
                      "JSON otherwise).",
    "logging.show_pii": "Write full phone numbers and message bodies in logs (off: numbers masked, bodies left "
                        "out). For debugging only.",
    "flowroute.api_base": "Flowroute's API; the sandbox points it at the simulator.",
    "flowroute.timeout_s": "How long a send to Flowroute may take; after a timeout the dispatcher looks the "
                           "message up before it sends again.",
    "flowroute.rate_margin_s": "Extra time added to each rate window, counted from an attempt's answer (the "
                               "limiter holds a slot from the send until a window after the answer, so network "
                               "delay is already covered).",
    "flowroute.request_dlrs": "Ask Flowroute for delivery receipts (`dlr_callback`) on every send.",
    "ledger.url": "`sqlite:///path` for one host, `postgresql://user@host/db` for several.",
    "ledger.password": "The database password, as a secret reference.",
    "ledger.schema": "PostgreSQL schema to keep the tables in (default: the user's search path).",
    "ledger.retention_days": "Message history older than this is pruned.",
    "ledger.prune_interval_s": "How often the pruner runs.",
    "ledger.migrate_on_start": "Apply pending schema migrations at start-up (off: run `smsbridge db upgrade` "
                               "yourself).",
    "ledger.timeout_s": "PostgreSQL: how long one ledger transaction (with the connection it takes from the pool) "
                        "may take. After that the database counts as unavailable (texts are held or retried, "
                        "never dropped) and the connection is discarded, not reused: a silent partition fails "
                        "here instead of hanging until TCP gives up.",
    "ledger.connect_timeout_s": "PostgreSQL: how long opening a connection (TCP, TLS, authentication) may take "
                                "before the database counts as unavailable.",
    "admin.token": "Bearer token for the history API (`GET /v1/messages`); without one the API answers 404.",
    "observability.enabled": "Serve /healthz, /readyz and /metrics from processes without the receiver role.",
    "observability.host": "Where they listen.",
    "observability.port": "Their port; 0 picks a free one (logged at start-up).",
    "observability.queue_poll_s": "How often queue depths are read for the `smsbridge_queue_messages` gauge.",
    "outbound.replace_smart_punctuation": "Replace curly quotes, dashes and ellipses with plain ASCII so a text "
                                          "stays in GSM-7 (more characters per segment).",
    "outbound.max_segments": "Longer SMS are refused (`too_long`) before they cost anything.",
    "outbound.max_media": "MMS with more attachments are refused.",
    "outbound.max_rate_limited_waits": "If Flowroute answers 429 anyway, how often the dispatcher pauses the "
                                       "account and tries again before it schedules a retry.",
    "media.store": "Where MMS attachments are kept: `off` (Flowroute's own URLs go to the PBX; they expire), "
                   "`local` (`directory`, one host) or `s3` (a bucket, several hosts). Any store needs `link_key`.",
    "media.directory": "local: the directory blobs are stored in, by sha256.",
    "media.s3_bucket": "s3: the bucket.",
    "media.s3_prefix": "s3: the start of every object key.",
    "media.s3_region": "s3: the bucket's region.",
    "media.s3_endpoint_url": "s3: the endpoint of an S3-compatible service (MinIO, Ceph); empty: AWS.",
    "media.s3_access_key": "s3: access key id, as a secret reference (empty: the default AWS credential chain).",
    "media.s3_secret_key": "s3: secret access key, as a secret reference.",
    "media.link_key": "The HMAC key that signs media links (`/media/<token>`), as a secret reference; at least 32 "
                      "characters. Changing it invalidates every link given out.",
    "media.public_url": "Where PBXs and Flowroute reach `/media/...`; empty: `[receiver] public_url`.",
    "media.link_days": "How long a media link works.",
    "media.link_days_by_tenant": "Per-tenant link lifetimes in days (`{ acme = 90 }`), overriding `link_days`.",
    "media.upload_tokens": "Per tenant, a token (secret reference) with which its PBX may `POST /v1/media` a file "
                           "and get a link to send, for PBXs that cannot host files (`{ acme = { env = \"...\" } }`).",
    "media.max_file_bytes": "An attachment larger than this is not downloaded (Flowroute documents up to 15 MB).",
    "media.max_message_bytes": "Attachments past this total per message are not downloaded.",
    "media.fetch_timeout_s": "How long one download may take.",
    "media.fetch_attempts": "Tries per attachment before the text is delivered without it (named in "
                            "`media_problems`).",
    "media.fetch_base_delay_s": "The first retry's delay; each later one doubles, with jitter.",
    "media.fetch_allowed_networks": "Networks (CIDR) media may be downloaded from besides public addresses; "
                                    "loopback, private and link-local ones are refused unless listed here "
                                    "(`[\"127.0.0.0/8\"]` for the sandbox). The `email` target fetches the "
                                    "pictures it attaches under the same rule, and from the bridge's own media host "
                                    "when `public_url` names it by address.",
    "media.outbound_max_bytes": "Outbound MMS whose media and text exceed this are refused before any attempt "
                                "(Flowroute: 750 kB).",
    "media.outbound_types": "Content types an outbound MMS may carry; others are refused before any attempt.",
    "sms_configs.id": "The configuration's name; it is part of its webhook URL.",
    "sms_configs.tenant": "The tenant (customer) it belongs to: its texts go to that tenant's PBX target only.",
    "sms_configs.access_key": "Flowroute Access Key (API username), as a secret reference.",
    "sms_configs.secret_key": "Flowroute Secret Key (API password), as a secret reference.",
    "sms_configs.webhook_token": "The secret part of the webhook URL (`/webhooks/flowroute/<id>/<token>`); at least "
                                 "24 characters.",
    "sms_configs.sender_id": "Send every text from this number instead of the DID chosen by the rules. Must be one "
                             "of this configuration's DIDs.",
    "sms_configs.dids": "The DIDs (E.164) this configuration owns; each DID belongs to one configuration.",
    "sms_configs.fallback_extensions": "Where a text goes when no inbound rule matches (empty: dead-lettered "
                                       "with `no_route`).",
    "sms_configs.help_reply": "If set, a text that is just HELP gets this reply (10DLC campaigns must answer HELP).",
    "sms_configs.account": "Names the Flowroute account for its dispatch queue and rate limit; configurations "
                           "with the same Access Key share one account. Empty: derived from the Access Key.",
    "sms_configs.sms_per_second": "The account's SMS limit (Flowroute: 5 per second, every attempt counted).",
    "sms_configs.mms_per_second": "The account's MMS limit (Flowroute: 1 per second).",
    "inbound_rules.config": "The SMS configuration whose texts this rule routes.",
    "inbound_rules.did": "One of its DIDs, or `*` for all of them.",
    "inbound_rules.extensions": "The extensions that get the text (all of them, like a ring group).",
    "inbound_rules.from_pattern": "Shell-style glob on the sender in E.164 (`+1206*`); empty: any sender.",
    "inbound_rules.name": "A name for logs and `check-config`.",
    "outbound_rules.config": "The SMS configuration (and so the Flowroute account) the texts go out through.",
    "outbound_rules.extensions": "Extensions this rule lets text out; `*` for every extension.",
    "outbound_rules.dids": "The configuration's DIDs they may send from (empty: all of them).",
    "outbound_rules.default_did": "The DID used when a request names none; one of the configuration's DIDs.",
    "outbound_rules.destinations": "Globs on the E.164 destination (`+1206*`); empty: every US/Canada number.",
    "outbound_rules.name": "A name for logs and `check-config`.",
    "pbx_targets.kind": "`http` (POST each delivery to the PBX), `amqp` (publish it to an exchange the PBX "
                        "consumes), `flowroute` (POST it as Flowroute's own webhook to the PBX's Flowroute "
                        "webhook URL: docs/pbx/), `sip` (SIP MESSAGE to the extension through a proxy or PBX: "
                        "docs/sip-and-email.md) or `email`. A tenant's targets are an ordered list in file order: "
                        "the first gets every text, the next one a text the previous gave up on; `email` with "
                        "`mode = \"always\"` gets a copy.",
    "pbx_targets.tenant": "The tenant whose deliveries go here (several targets: see `kind`).",
    "pbx_targets.url": "http: where each delivery is POSTed. flowroute: the PBX's own Flowroute webhook URL.",
    "pbx_targets.auth_header": "http: the header that carries `auth_value`.",
    "pbx_targets.auth_value": "http: its value, as a secret reference (e.g. `Bearer ...`).",
    "pbx_targets.timeout_s": "http, flowroute, sip, email: how long the PBX may take to answer before the delivery "
                             "is retried (sip: Timer F, UDP retransmissions included).",
    "pbx_targets.extension_urls": "flowroute: extension (as named by inbound rules) → another PBX's webhook URL; "
                                  "other extensions go to `url`. Each URL gets each text once.",
    "pbx_targets.forward_dlrs": "flowroute: also post Flowroute-shaped delivery receipts of this tenant's relayed "
                                "sends to `url` (they always go to the send's `dlr_callback`).",
    "pbx_targets.payload": "flowroute: `jsonapi` (Flowroute's current webhook) or `legacy` (its flat v2 body, for "
                           "hooks older than 2020).",
    "relay.path_prefix": "Where the receiver serves the Flowroute-compatible send API "
                         "(`<prefix>/v2/messages`, `/v2.1/...`, `/v2.2/...`), when relay clients are configured.",
    "relay.idempotency_window_s": "A send repeating an `Idempotency-Key` of the same tenant within this window "
                                  "gets the first answer and is not sent again; a retry of a send that was "
                                  "never confirmed publishes it again under its first id, and the window then "
                                  "counts from that retry.",
    "relay.max_body_chars": "Relayed sends with a longer body are refused with 422 (the segment limit of "
                            "`[outbound]` applies too).",
    "relay.id_key": "The HMAC key that signs (and verifies) the ids of relayed sends, as a secret reference; "
                    "at least 32 characters, the same on every receiver and outbound worker. Set, a send without "
                    "an `Idempotency-Key` is answered once RabbitMQ confirms it and the outbound stage records it "
                    "(the faster path); unset, the receiver records it first. Order: turning it on, set it on the "
                    "outbound workers first, then the receivers; turning it off, unset it on the receivers first, "
                    "let the outbound queue drain, then the workers; rotating, see `previous_id_keys`.",
    "relay.previous_id_keys": "Keys that signed ids before a rotation, as secret references (each at least 32 "
                              "characters): they verify ids, never sign. Rotating: on the outbound workers first, "
                              "set the new key as `id_key` and add the old one here; then the same on the "
                              "receivers. Keep the old key here for at least `[retry.outbound] max_age_s` plus the "
                              "relay lookup window (that max age plus an hour): 49 h by default. An id signed with "
                              "a key a worker does not have gets no relay row (no DLRs to its `dlr_callback`).",
    "relay_clients.tenant": "The tenant this PBX sends for; it may send from that tenant's DIDs only.",
    "relay_clients.access_key": "The Basic user name the PBX uses in place of Flowroute's Access Key (not a "
                                "Flowroute key).",
    "relay_clients.secret_key": "Its password, in place of Flowroute's Secret Key, as a secret reference; at least "
                                "24 characters, never a Flowroute key.",
    "relay_clients.extension": "Who the outbound rules see sending: name it in an `[[outbound_rules]]` entry.",
    "relay_clients.name": "A name for logs and `check-config`.",
    "relay_clients.dlr_callback_networks": "Networks (CIDR) this PBX's `dlr_callback` URLs may point to besides "
                                           "public addresses, e.g. the PBX's LAN; loopback, private and "
                                           "link-local addresses are refused otherwise (SSRF).",
    "pbx_targets.exchange": "amqp: the exchange deliveries are published to, key `<tenant>.<extension>`.",
    "sip_intake.host": "`sip` role: the address phones' texts arrive on (UDP and TCP).",
    "sip_intake.port": "`sip` role: the port, UDP and TCP (0: any free port, logged at start-up).",
    "sip_intake.realm": "`sip` role: the digest realm of its 407 challenges.",
    "sip_intake.retry_after_s": "`sip` role: the Retry-After of a 503 while the broker is away.",
    "sip_intake.peers": "`sip` role: who may send, each `{ tenant, address, username, password }`: the tenant "
                        "whose extensions its phones are, its source IP (empty: any, then a digest user is "
                        "needed), the digest user it must authenticate as (empty: by address only) and its "
                        "password as a secret reference. A MESSAGE from anyone else is refused with 403.",
    "pbx_targets.host": "sip: the next hop every MESSAGE goes through (Kamailio, Asterisk, FreeSWITCH...); "
                        "email: the mail server.",
    "pbx_targets.port": "sip, email: its port.",
    "pbx_targets.transport": "sip: `udp`, `tcp`, or `auto` (UDP, TCP for a request above 1,300 bytes, "
                             "RFC 3261 18.1.1).",
    "pbx_targets.domain": "sip: the domain of `sip:<extension>@<domain>` and of the sender in `From`.",
    "pbx_targets.username": "sip: the digest user for 401/407 challenges (empty: none; a challenge then fails); "
                            "email: the SMTP AUTH user (empty: no AUTH).",
    "pbx_targets.password": "sip, email: its password, as a secret reference.",
    "pbx_targets.body_budget_bytes": "sip: the largest body in UTF-8 bytes; longer texts go in numbered parts "
                                     "cut between graphemes (Asterisk keeps 1,024 bytes: use at most 1,000).",
    "pbx_targets.mode": "email: `fallback` (gets a text its tenant's previous target gave up on) or `always` "
                        "(a copy of every text).",
    "pbx_targets.security": "email: `starttls` (port 587), `tls` (implicit, port 465) or `none` (tests only).",
    "pbx_targets.ca_file": "email: a CA bundle for a mail server with a private certificate (empty: the system's).",
    "pbx_targets.sender": "email: the From address of the mails.",
    "pbx_targets.recipients": "email: the address of each extension (`{ \"1001\" = \"alice@example.com\" }`).",
    "pbx_targets.default_recipient": "email: the address for an extension not in `recipients`.",
    "pbx_targets.attach_max_bytes": "email: pictures are attached while their total stays under this; the rest are "
                                    "linked.",
    "pbx_targets.from_format": "sip: the `From` user: `sender` (`+12065550100`) or `did+sender` "
                               "(`+12065550111+12065550100`, which tells the phone which DID was texted).",
}

INTRO = """# Configuration reference

Generated from `src/smsbridge/config.py` by `python -m smsbridge.config_reference`; do not edit by
hand. One TOML file holds everything; `smsbridge check-config FILE` lists every problem with its
place. `deploy/sample.toml` is a working example (what `make run` uses).

Secrets are never written in the file: each is a reference, `{ env = "NAME" }` or
`{ file = "path" }` (relative to the file), resolved at start-up.

Names on the broker: every exchange and queue starts with `[broker] prefix` (default `smsbridge`),
e.g. `smsbridge.requests` (where PBXs publish outbound requests), `smsbridge.status`,
`smsbridge.dead-letters`. docs/operations.md lists them all.
"""


def _type(t: inspect.Type) -> str:
    if isinstance(t, inspect.StrType):
        pattern = (t.pattern or "").replace("|", "\\|")  # a bare | would end the table cell
        return "string" + (f" matching `{pattern}`" if pattern else "")
    if isinstance(t, inspect.IntType | inspect.FloatType):
        name = "integer" if isinstance(t, inspect.IntType) else "number"
        bounds = [f"{op} {v:g}" for op, v in ((">", t.gt), ("≥", t.ge), ("<", t.lt), ("≤", t.le)) if v is not None]
        return f"{name} ({', '.join(bounds)})" if bounds else name
    if isinstance(t, inspect.BoolType):
        return "boolean"
    if isinstance(t, inspect.ListType):
        return f"list of {_type(t.item_type)}"
    if isinstance(t, inspect.LiteralType):
        return " \\| ".join(f"`{json.dumps(v)}`" for v in t.values)
    if isinstance(t, inspect.UnionType):
        return " or ".join(_type(x) for x in t.types if not isinstance(x, inspect.NoneType))
    if isinstance(t, inspect.CustomType):
        return "secret reference"
    return type(t).__name__.removesuffix("Type").lower()


def _default(field: inspect.Field, owner: Any) -> str:
    """The default as the program has it: read off a default instance of the section, so that
    sections whose defaults differ by place (the retry policies) show their own."""
    if field.required:
        return "required"
    value = getattr(owner, field.name) if owner is not None else (
        field.default_factory() if field.default is msgspec.NODEFAULT else field.default)
    if value is None or value == []:
        return "(none)"
    return f"`{json.dumps(value)}`"


Row = tuple[str, str, str, str, str]  # section heading, meaning key, TOML key, type, default


def rows() -> Iterator[Row]:
    """A row for every key, in file order."""
    root = inspect.type_info(Settings)
    assert isinstance(root, inspect.StructType)
    defaults = Settings()
    for field in root.fields:
        if not isinstance(field.type, inspect.StructType | inspect.ListType):
            yield "top level", field.encode_name, field.encode_name, _type(field.type), _default(field, defaults)
    for field in root.fields:
        yield from _section(field, getattr(defaults, field.name))


def _fields(heading: str, where: str, struct: inspect.StructType, owner: Any) -> Iterator[Row]:
    for f in struct.fields:
        yield heading, f"{where}.{f.encode_name}", f.encode_name, _type(f.type), _default(f, owner)


def _section(field: inspect.Field, owner: Any) -> Iterator[Row]:
    t, name = field.type, field.encode_name
    if isinstance(t, inspect.StructType) and all(isinstance(f.type, inspect.StructType) for f in t.fields):
        for sub in t.fields:  # [retry.inbound] ...: the same keys per stage, each with its own defaults
            assert isinstance(sub.type, inspect.StructType)
            yield from _fields(f"[{name}.{sub.encode_name}]", f"{name}.*", sub.type, getattr(owner, sub.name))
    elif isinstance(t, inspect.StructType):
        yield from _fields(f"[{name}]", name, t, owner)
    elif isinstance(t, inspect.ListType):
        variants = t.item_type.types if isinstance(t.item_type, inspect.UnionType) else (t.item_type,)
        structs = [v for v in variants if isinstance(v, inspect.StructType)]
        heading, seen = f"[[{name}]]", set()
        tag_field = structs[0].tag_field
        if tag_field:
            kinds = " \\| ".join(f"`{json.dumps(v.tag)}`" for v in structs)
            seen.add(tag_field)
            yield heading, f"{name}.{tag_field}", tag_field, kinds, "required"
        for variant in structs:
            for row in _fields(heading, name, variant, None):
                if row[2] not in seen:
                    seen.add(row[2])
                    yield row


def render() -> str:
    out = [INTRO]
    heading = None
    for section, key, toml_key, type_text, default in rows():
        if section != heading:
            heading = section
            out += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out.append(f"| `{toml_key}` | {type_text} | {default} | {MEANING.get(key, '')} |")
    return "\n".join(out).rstrip() + "\n"


def missing_and_stale() -> tuple[list[str], list[str]]:
    """Keys without a meaning, and meanings of keys that no longer exist."""
    documented = {row[1] for row in rows()}
    return sorted(documented - MEANING.keys()), sorted(MEANING.keys() - documented)


if __name__ == "__main__":
    print(render(), end="")
