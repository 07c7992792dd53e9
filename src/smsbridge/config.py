"""Settings and SMS configurations, read from one TOML file.

The shape follows PortSIP's "Flowroute SMS Integration": an SMS configuration holds the
Flowroute Access Key and Secret Key, an optional Sender ID, the DIDs it owns and the token of
its webhook URL; inbound rules route texts to extensions; each tenant names its PBX target.
Secrets are never written in the file: they are references (`{ env = "NAME" }` or
`{ file = "path" }`) resolved at load time into `Secret` values.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec

from smsbridge.secret import Secret

Ident = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
E164 = Annotated[str, msgspec.Meta(pattern=r"^\+1[2-9]\d{2}[2-9]\d{6}$")]
Extension = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@+-]{1,64}$")]
# "*" or a value: msgspec cannot mix Literal["*"] with a constrained str, so one pattern each.
E164OrAny = Annotated[str, msgspec.Meta(pattern=r"^(\*|\+1[2-9]\d{2}[2-9]\d{6})$")]
ExtensionOrAny = Annotated[str, msgspec.Meta(pattern=r"^(\*|[A-Za-z0-9_.@+-]{1,64})$")]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class BrokerSettings(_Section, frozen=True, kw_only=True):
    urls: list[str] = msgspec.field(default_factory=lambda: ["amqp://guest:guest@127.0.0.1:5672/"])
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "smsbridge"
    prefetch: PositiveInt = 32
    publish_timeout_s: PositiveFloat = 5.0
    delivery_limit: PositiveInt = 20
    # Where quorum queues are placed when first declared (broker/topology.py): the replica count,
    # and which node leads each ("balanced": the one leading fewest; "" leaves it to a policy).
    quorum_initial_group_size: Annotated[int, msgspec.Meta(ge=1, le=15)] = 3
    queue_leader_locator: Literal["balanced", "client-local", ""] = "balanced"
    # With several nodes: how long, after its connection comes back, the inbound stage holds the
    # texts it routes so that any the broker had sent the lost connection go first (broker/handback.py).
    hand_back_hold_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 10.0


class ReceiverSettings(_Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: PositiveInt = 256 * 1024
    allowed_source_ips: list[str] = []
    # Seconds a client has to send a request's headers (from its connection, or the end of the
    # previous answer), and again for its body; then the connection is closed. A slow or stalled
    # sender must not hold a connection (and its memory) for ever.
    read_timeout_s: PositiveFloat = 10.0


class RetryPolicy(_Section, frozen=True, kw_only=True):
    max_attempts: PositiveInt = 10
    max_age_s: PositiveFloat = 24 * 3600.0
    base_delay_s: PositiveFloat = 1.0
    max_delay_s: PositiveFloat = 300.0


def _inbound_policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=60.0)


def _delivery_policy() -> RetryPolicy:
    # A PBX down for a maintenance window must still get every text: retry for a day.
    return RetryPolicy(max_attempts=60, base_delay_s=2.0, max_delay_s=300.0)


def _dispatch_policy() -> RetryPolicy:
    # A text that could not go out within an hour is usually no longer wanted: fail it visibly.
    return RetryPolicy(max_attempts=12, max_age_s=3600.0, base_delay_s=2.0, max_delay_s=300.0)


class RetrySettings(_Section, frozen=True, kw_only=True):
    inbound: RetryPolicy = msgspec.field(default_factory=_inbound_policy)
    delivery: RetryPolicy = msgspec.field(default_factory=_delivery_policy)
    outbound: RetryPolicy = msgspec.field(default_factory=_inbound_policy)
    dispatch: RetryPolicy = msgspec.field(default_factory=_dispatch_policy)


class LedgerSettings(_Section, frozen=True, kw_only=True):
    """Where the ledger lives: `sqlite:///path` (one host) or `postgresql://user@host/db` (several)."""

    url: str = "sqlite:///var/lib/smsbridge/ledger.sqlite3"
    password: Secret | None = None
    schema: str | None = None
    retention_days: PositiveFloat = 30.0
    prune_interval_s: PositiveFloat = 3600.0
    migrate_on_start: bool = True
    # PostgreSQL only (ledger/runner.py, `AsyncRunner`): a database that stops answering without
    # closing the connection (a partition, a dead host) fails a transaction after `timeout_s` as
    # an outage, instead of waiting for TCP to give up (about 15 min).
    # Bounded: 2 x timeout_s in ms is PostgreSQL's idle_in_transaction_session_timeout (an
    # integer setting: too large and every connection is refused; too small and it is milliseconds).
    timeout_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 5.0
    connect_timeout_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 5.0


class AdminSettings(_Section, frozen=True, kw_only=True):
    """`GET /v1/messages` and `/v1/messages/{id}` need `Authorization: Bearer <token>`; no token: off."""

    token: Secret | None = None


class ObservabilitySettings(_Section, frozen=True, kw_only=True):
    """A process without the receiver role serves /healthz, /readyz and /metrics here
    (`port = 0`: any free port, logged at start-up; `enabled = false`: none)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9108
    queue_poll_s: PositiveFloat = 15.0


class LoggingSettings(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    show_pii: bool = False


class FlowrouteSettings(_Section, frozen=True, kw_only=True):
    api_base: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = "https://api.flowroute.com"
    timeout_s: PositiveFloat = 15.0
    rate_margin_s: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.01  # after an attempt's answer
    request_dlrs: bool = True


class OutboundSettings(_Section, frozen=True, kw_only=True):
    replace_smart_punctuation: bool = True
    max_segments: PositiveInt = 10
    max_media: PositiveInt = 10
    max_rate_limited_waits: PositiveInt = 5


class MediaSettings(_Section, frozen=True, kw_only=True):
    """MMS attachments: fetched from Flowroute on receipt, kept by content hash, served by signed links.

    `store = "off"` passes Flowroute's own URLs through (they expire); `local` keeps files in
    `directory` (one host); `s3` in a bucket (several hosts). Any store needs `link_key`."""

    store: Literal["off", "local", "s3"] = "off"
    directory: str = "/var/lib/smsbridge/media"
    s3_bucket: str = ""
    s3_prefix: str = "media/"
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None  # None: AWS; else MinIO, Ceph, ...
    s3_access_key: Secret | None = None  # None: the default AWS credential chain
    s3_secret_key: Secret | None = None
    link_key: Secret | None = None
    public_url: str = ""  # empty: [receiver] public_url
    link_days: PositiveFloat = 30.0
    link_days_by_tenant: dict[str, PositiveFloat] = {}
    upload_tokens: dict[str, Secret] = {}  # tenant -> token for POST /v1/media (PBXs that cannot host files)
    max_file_bytes: PositiveInt = 15 * 1024 * 1024
    max_message_bytes: PositiveInt = 30 * 1024 * 1024
    fetch_timeout_s: PositiveFloat = 30.0
    fetch_attempts: PositiveInt = 3
    fetch_base_delay_s: PositiveFloat = 1.0
    # Media are fetched only from globally routable addresses, and from these networks (CIDR).
    fetch_allowed_networks: list[str] = []
    # flowroute-api.md §2: 750 kB per MMS, text included; the types most carriers render.
    outbound_max_bytes: PositiveInt = 750_000
    outbound_types: list[str] = msgspec.field(default_factory=lambda: [
        "image/png", "image/jpeg", "image/gif", "image/bmp", "video/3gpp", "video/mp4", "video/x-msvideo",
        "video/mpeg", "audio/amr", "audio/midi", "audio/wav", "audio/x-wav", "audio/ac3", "audio/mpeg", "text/plain",
    ])

    def link_lifetime_s(self, tenant: str) -> float:
        return self.link_days_by_tenant.get(tenant, self.link_days) * 86400.0


class SmsConfig(_Section, frozen=True, kw_only=True):
    """One Flowroute SMS configuration: credentials, DIDs and one webhook URL.

    `account` names the Flowroute account for its dispatch queue; configurations with the same
    Access Key share one account and so one rate limit. Empty: derived from the Access Key.
    """

    id: Ident
    tenant: Ident
    access_key: Secret
    secret_key: Secret
    webhook_token: Secret
    sender_id: Annotated[str, msgspec.Meta(pattern=r"^(\+1[2-9]\d{2}[2-9]\d{6})?$")] = ""  # empty: the DID
    dids: list[E164]
    fallback_extensions: list[Extension] = []
    help_reply: str = ""
    account: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$|^$")] = ""
    sms_per_second: PositiveInt = 5
    mms_per_second: PositiveInt = 1

    @property
    def account_name(self) -> str:
        if self.account:
            return self.account
        digest = hashlib.sha256(self.access_key.reveal().encode()).hexdigest()[:12]
        return f"acct-{digest}"


class InboundRule(_Section, frozen=True, kw_only=True):
    """Route texts to one DID (or `*`, every DID of the configuration) to extensions.

    `from_pattern` is a shell-style glob on the sender in E.164 (`+1206*`).
    Rules are tried in file order; the first match wins.
    """

    config: Ident
    did: E164OrAny = "*"
    extensions: Annotated[list[Extension], msgspec.Meta(min_length=1)]
    from_pattern: str | None = None
    name: str = ""


class OutboundRule(_Section, frozen=True, kw_only=True):
    """Which extensions may text out, from which DIDs, to which numbers (deny by default).

    `extensions = ["*"]` means every extension; `dids` are the DIDs they may send from (all of
    the configuration's when empty); `default_did` is used when the request names none;
    `destinations` are globs on the E.164 destination (every NANP number when empty).
    """

    config: Ident
    extensions: Annotated[list[ExtensionOrAny], msgspec.Meta(min_length=1)]
    dids: list[E164] = []
    default_did: E164 | None = None
    destinations: list[str] = []
    name: str = ""


class HttpTarget(_Section, frozen=True, kw_only=True, tag="http", tag_field="kind"):
    """POST each delivery as JSON to the tenant's PBX."""

    tenant: Ident
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    auth_header: str = "Authorization"
    auth_value: Secret | None = None
    timeout_s: PositiveFloat = 10.0


class AmqpTarget(_Section, frozen=True, kw_only=True, tag="amqp", tag_field="kind"):
    """Publish each delivery to an exchange the PBX consumes, key `<tenant>.<extension>`."""

    tenant: Ident
    exchange: str = "smsbridge.pbx"


class FlowrouteTarget(_Section, frozen=True, kw_only=True, tag="flowroute", tag_field="kind"):
    """POST each inbound text, shaped as Flowroute posts it, to the PBX's own Flowroute webhook
    (PortSIP's "Copy Webhook", FreePBX SMS Connector's and FusionPBX's Flowroute hook).

    `extension_urls` lets the inbound rules choose between several such PBXs: an extension named
    here goes to its URL, any other to `url`. `forward_dlrs`: delivery receipts of texts this
    tenant sent through the relay API also go to `url` (besides the request's `dlr_callback`).
    `payload = "legacy"` posts Flowroute's flat v2 body instead, for PBX hooks older than the
    JSON:API shape (FusionPBX's Flowroute hook before 2020).
    """

    tenant: Ident
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    extension_urls: dict[Extension, Annotated[str, msgspec.Meta(pattern=r"^https?://")]] = {}
    forward_dlrs: bool = False
    payload: Literal["jsonapi", "legacy"] = "jsonapi"  # legacy: the flat {to, from, body, id} of old hooks
    timeout_s: PositiveFloat = 10.0


class SipTarget(_Section, frozen=True, kw_only=True, tag="sip", tag_field="kind"):
    """Send each delivery as SIP MESSAGE to `sip:<extension>@<domain>` through a next hop."""

    tenant: Ident
    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 5060
    transport: Literal["udp", "tcp", "auto"] = "auto"
    domain: str
    username: str = ""
    password: Secret | None = None
    body_budget_bytes: Annotated[int, msgspec.Meta(ge=32, le=60000)] = 1000
    from_format: Literal["sender", "did+sender"] = "sender"
    timeout_s: PositiveFloat = 10.0


class EmailTarget(_Section, frozen=True, kw_only=True, tag="email", tag_field="kind"):
    """Mail each delivery: when the tenant's previous target gave up (`mode = "fallback"`), or as
    a copy of every text (`mode = "always"`)."""

    tenant: Ident
    mode: Literal["fallback", "always"] = "fallback"
    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: str = ""
    username: str = ""
    password: Secret | None = None
    sender: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$")]
    recipients: dict[str, str] = {}
    default_recipient: str = ""
    attach_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 5_000_000
    timeout_s: PositiveFloat = 30.0


PbxTarget = HttpTarget | AmqpTarget | FlowrouteTarget | SipTarget | EmailTarget

RelayKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{8,64}$")]


class RelayClient(_Section, frozen=True, kw_only=True):
    """Basic credentials the bridge issues to one PBX for its Flowroute-compatible send API.

    The PBX uses them where it would put Flowroute's Access Key and Secret Key; they are never
    the real Flowroute keys. Its sends go through the outbound rules as `extension`, and may use
    only the DIDs of the tenant's SMS configurations. The `dlr_callback` it names must be a public
    address or inside `dlr_callback_networks` (the PBX's own network, typically).
    """

    tenant: Ident
    access_key: RelayKey
    secret_key: Secret
    extension: Extension = "relay"
    name: str = ""
    dlr_callback_networks: list[str] = []


class RelaySettings(_Section, frozen=True, kw_only=True):
    """The Flowroute-compatible send API (`<path_prefix>/v2/messages`, `/v2.1/…`, `/v2.2/…`),
    served by the receiver when `[[relay_clients]]` lists at least one client."""

    path_prefix: Annotated[str, msgspec.Meta(pattern=r"^(/[A-Za-z0-9_.-]+)+$")] = "/flowroute"
    idempotency_window_s: PositiveFloat = 24 * 3600.0
    max_body_chars: PositiveInt = 5000
    # Signs the ids of relayed sends (`relay_ids.py`). Set, a send without an Idempotency-Key is
    # answered once RabbitMQ confirms it and the outbound stage writes its row; unset, the
    # receiver writes that row itself. The same key on every receiver and outbound worker.
    id_key: Secret | None = None
    # Keys that signed ids before a rotation: they verify ids, never sign new ones.
    previous_id_keys: list[Secret] = []

    def id_keys(self) -> tuple[Secret, ...]:
        """Every key an id may be signed with (`relay_ids.issued`): the current one first."""
        return (*([self.id_key] if self.id_key is not None else []), *self.previous_id_keys)


class SipPeer(_Section, frozen=True, kw_only=True):
    """A PBX or proxy allowed to hand phones' texts to the SIP intake, for one tenant: by source
    address, by digest user, or both (both must then match)."""

    tenant: Ident
    address: str = ""
    username: str = ""
    password: Secret | None = None


class SipIntakeSettings(_Section, frozen=True, kw_only=True):
    """The `sip` role: phones text out by SIP MESSAGE, on UDP and TCP."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 5080
    realm: str = "smsbridge"
    peers: list[SipPeer] = []
    retry_after_s: PositiveInt = 5


class Settings(_Section, frozen=True, kw_only=True):
    broker: BrokerSettings = msgspec.field(default_factory=BrokerSettings)
    receiver: ReceiverSettings = msgspec.field(default_factory=ReceiverSettings)
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    drain_timeout_s: PositiveFloat = 20.0
    flowroute: FlowrouteSettings = msgspec.field(default_factory=FlowrouteSettings)
    ledger: LedgerSettings = msgspec.field(default_factory=LedgerSettings)
    admin: AdminSettings = msgspec.field(default_factory=AdminSettings)
    observability: ObservabilitySettings = msgspec.field(default_factory=ObservabilitySettings)
    outbound: OutboundSettings = msgspec.field(default_factory=OutboundSettings)
    relay: RelaySettings = msgspec.field(default_factory=RelaySettings)
    media: MediaSettings = msgspec.field(default_factory=MediaSettings)
    sms_configs: list[SmsConfig] = []
    inbound_rules: list[InboundRule] = []
    outbound_rules: list[OutboundRule] = []
    pbx_targets: list[PbxTarget] = []
    relay_clients: list[RelayClient] = []
    sip_intake: SipIntakeSettings = msgspec.field(default_factory=SipIntakeSettings)

    def sms_config(self, config_id: str) -> SmsConfig | None:
        return next((c for c in self.sms_configs if c.id == config_id), None)

    def pbx_target(self, tenant: str) -> PbxTarget | None:
        return next((t for t in self.pbx_targets if t.tenant == tenant), None)

    def relay_client(self, access_key: str) -> RelayClient | None:
        return next((c for c in self.relay_clients if c.access_key == access_key), None)

    def targets_of(self, tenant: str) -> list[PbxTarget]:
        """The tenant's targets in file order: its delivery index (`InboundDelivery.target`)."""
        return [t for t in self.pbx_targets if t.tenant == tenant]

    def configs_of(self, tenant: str) -> list[SmsConfig]:
        return [c for c in self.sms_configs if c.tenant == tenant]

    def accounts(self) -> dict[str, SmsConfig]:
        """One SMS configuration per Flowroute account (its credentials and limits)."""
        found: dict[str, SmsConfig] = {}
        for config in self.sms_configs:
            found.setdefault(config.account_name, config)
        return found

    def rules_for(self, config_id: str) -> list[InboundRule]:
        return [r for r in self.inbound_rules if r.config == config_id]

    def media_base_url(self) -> str:
        """Where signed media links start: `[media] public_url`, else the receiver's."""
        return (self.media.public_url or self.receiver.public_url).rstrip("/")

    def webhook_url(self, config: SmsConfig) -> str:
        base = self.receiver.public_url.rstrip("/")
        return f"{base}/webhooks/flowroute/{config.id}/{config.webhook_token.reveal()}"

