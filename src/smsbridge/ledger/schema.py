"""Tables, and the versioned migrations that create and change them.

A migration is a numbered function over a connection; `upgrade` applies the missing ones in
order inside one transaction, under a lock so that processes starting together do not race.
Add a migration for every change; never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from smsbridge.ledger.runner import unhurried
from smsbridge.ledger.scope_migration import scope_ids

metadata = sa.MetaData()
MESSAGES_IDS = "uq_messages_mdr_config_direction"
When = sa.DateTime(timezone=True)

schema_versions = sa.Table(
    "smsbridge_schema", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", When, nullable=False),
)

messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("direction", sa.String(8), nullable=False),  # inbound | outbound
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("config_id", sa.String(64), nullable=False),
    sa.Column("client_message_id", sa.String(128)),
    sa.Column("mdr_id", sa.String(80)),
    sa.Column("from_number", sa.String(32), nullable=False),
    sa.Column("to_number", sa.String(32), nullable=False),
    sa.Column("from_extension", sa.String(64)),
    sa.Column("body", sa.Text, nullable=False, default=""),
    sa.Column("is_mms", sa.Boolean, nullable=False, default=False),
    sa.Column("segments", sa.Integer),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason_code", sa.String(64)),
    sa.Column("reason", sa.Text),
    sa.Column("dispatch_state", sa.String(16)),  # outbound: queued | sending | done
    sa.Column("send_started_at", When),
    sa.Column("created_at", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
    sa.UniqueConstraint("tenant", "client_message_id", name="uq_messages_tenant_client_id"),
    # A Flowroute id is unique within one configuration and direction only (migration 6): another
    # configuration's webhook posting the same id (hostile, a replay, a buggy sender) is its own
    # text. The id first, so that the index also serves look-ups by id across configurations.
    sa.UniqueConstraint("mdr_id", "config_id", "direction", name=MESSAGES_IDS),
)
sa.Index("ix_messages_updated", messages.c.updated_at)
sa.Index("ix_messages_tenant_id", messages.c.tenant, messages.c.id)
sa.Index("ix_messages_to", messages.c.to_number)
sa.Index("ix_messages_from", messages.c.from_number)

status_history = sa.Table(
    "status_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason_code", sa.String(64)),
    sa.Column("reason", sa.Text),
    sa.Column("dlr_level", sa.Integer),
    sa.Column("dlr_code", sa.Integer),
    sa.Column("at", When, nullable=False),
)
sa.Index("ix_status_history_message", status_history.c.message_id)

# Delivery claims and the order of deliveries are keyed within the configuration the text came in
# for (migration 6): two configurations' texts with one Flowroute id, to extensions of the same
# name, are two deliveries.
deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("mdr_id", sa.String(80), nullable=False),
    sa.Column("config_id", sa.String(64), nullable=False),
    sa.Column("extension", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # delivering | delivered | accepted (SIP 202)
    sa.Column("lease_until", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
    sa.PrimaryKeyConstraint("mdr_id", "config_id", "extension", name="deliveries_pkey"),
)
sa.Index("ix_deliveries_updated", deliveries.c.updated_at)

dlrs_seen = sa.Table(
    "dlrs_seen", metadata,
    sa.Column("dedupe_key", sa.String(255), primary_key=True),
    sa.Column("mdr_id", sa.String(80), nullable=False),
    sa.Column("seen_at", When, nullable=False),
    # The broker event (its `event_id`) whose handling claimed the receipt (migration 5): that
    # same event coming again after its claim committed unseen is its own claim, not a resend.
    # NULL for rows claimed before the column existed.
    sa.Column("claimed_by", sa.String(64)),
)
sa.Index("ix_dlrs_seen_at", dlrs_seen.c.seen_at)

# The order of inbound texts per conversation and extension (see `ledger/order.py`): one row per
# (text, extension) from the moment the inbound stage routed it; `body` is the encoded delivery,
# kept so that a text waiting for its turn need not sit in RabbitMQ.
delivery_order = sa.Table(
    "delivery_order", metadata,
    sa.Column("mdr_id", sa.String(80), nullable=False),
    sa.Column("config_id", sa.String(64), nullable=False),
    sa.Column("extension", sa.String(64), nullable=False),
    sa.Column("conversation", sa.String(255), nullable=False),
    sa.Column("received_at", When, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),  # waiting | live (in RabbitMQ) | done
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", When, nullable=False),
    sa.PrimaryKeyConstraint("mdr_id", "config_id", "extension", name="delivery_order_pkey"),
)
sa.Index("ix_delivery_order_turn", delivery_order.c.conversation, delivery_order.c.state,
         delivery_order.c.received_at)
sa.Index("ix_delivery_order_updated", delivery_order.c.updated_at)

# Sends taken by the Flowroute-compatible relay API: the bridge's id for each, the PBX's
# Idempotency-Key (one answer per key within a day) and where its delivery receipts go.
relay_sends = sa.Table(
    "relay_sends", metadata,
    sa.Column("bridge_id", sa.String(80), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("access_key", sa.String(64), nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending (publishing) | queued
    sa.Column("dlr_callback", sa.Text),
    sa.Column("created_at", When, nullable=False),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_relay_sends_tenant_key"),
)
sa.Index("ix_relay_sends_created", relay_sends.c.created_at)

# MMS attachments the bridge keeps (issue 20): one row per attachment of a message, whether it
# was stored (`blob_key` is the sha256 of its bytes) or could not be ("missing", with a reason).
media = sa.Table(
    "media", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("direction", sa.String(8), nullable=False),  # inbound | outbound
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("message_ref", sa.String(255), nullable=False),  # media_ops.inbound_ref / outbound_ref
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # stored | missing
    sa.Column("blob_key", sa.String(64)),
    sa.Column("mime_type", sa.String(128)),
    sa.Column("file_name", sa.String(255)),
    sa.Column("size", sa.BigInteger),
    sa.Column("source_url", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
    sa.UniqueConstraint("message_ref", "position", name="uq_media_message_position"),
)
sa.Index("ix_media_blob", media.c.blob_key)
sa.Index("ix_media_updated", media.c.updated_at)

Migration = Callable[[sa.Connection], None]


def _create(connection: sa.Connection, *tables: sa.Table) -> None:
    """CREATE … IF NOT EXISTS: safe when two processes migrate at the same moment (no check-then-act)."""
    for table in tables:
        connection.execute(sa.schema.CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            connection.execute(sa.schema.CreateIndex(index, if_not_exists=True))


def _v1_initial(connection: sa.Connection) -> None:
    _create(connection, messages, status_history, deliveries, dlrs_seen)


def _v2_delivery_order(connection: sa.Connection) -> None:
    _create(connection, delivery_order)


def _v3_relay_sends(connection: sa.Connection) -> None:
    _create(connection, relay_sends)


def _v4_media(connection: sa.Connection) -> None:
    _create(connection, media)


def _v5_dlr_claimed_by(connection: sa.Connection) -> None:
    # A ledger created since this column was added to the table got it from migration 1 already.
    # Upgraders take turns (see `upgrade`), so checking first does not race.
    columns = {column["name"] for column in sa.inspect(connection).get_columns(dlrs_seen.name)}
    if "claimed_by" not in columns:
        connection.execute(sa.text("ALTER TABLE dlrs_seen ADD COLUMN claimed_by VARCHAR(64)"))


def _v6_ids_per_configuration(connection: sa.Connection) -> None:
    scope_ids(connection, messages, status_history, deliveries, delivery_order)


MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "messages, status history, deliveries, DLR dedupe", _v1_initial),
    (2, "delivery order per conversation and extension", _v2_delivery_order),
    (3, "relay sends (Flowroute-compatible API)", _v3_relay_sends),
    (4, "media: MMS attachments kept by the bridge", _v4_media),
    (5, "DLR dedupe: the event that claimed each receipt", _v5_dlr_claimed_by),
    (6, "Flowroute ids, delivery claims and order scoped per configuration", _v6_ids_per_configuration),
]
LATEST = MIGRATIONS[-1][0]


@unhurried
def upgrade(connection: sa.Connection) -> list[int]:
    """Apply missing migrations; return the versions applied. Call inside a (write) transaction:
    on SQLite, BEGIN IMMEDIATE makes upgraders take turns; on PostgreSQL, an advisory lock does."""
    if connection.dialect.name == "postgresql":
        # one upgrader at a time across processes; released at commit
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(727_001)))
    _create(connection, schema_versions)
    done = set(connection.execute(sa.select(schema_versions.c.version)).scalars())
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    applied = []
    for version, name, migrate in MIGRATIONS:
        if version in done:
            continue
        migrate(connection)
        recorded = connection.execute(insert(schema_versions).values(
            version=version, name=name, applied_at=datetime.now(UTC)).on_conflict_do_nothing())
        if recorded.rowcount == 1:
            applied.append(version)
    return applied


def current_version(connection: sa.Connection) -> int:
    if not sa.inspect(connection).has_table(schema_versions.name):
        return 0
    value = connection.execute(sa.select(sa.func.max(schema_versions.c.version))).scalar()
    return int(value or 0)
