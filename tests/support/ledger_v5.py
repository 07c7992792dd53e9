"""The ledger as release 5 left it, for migration tests: the tables migration 6 changes, frozen
as they were (a Flowroute id unique across the ledger; claims and order rows keyed by id and
extension alone). The other tables did not change."""

from __future__ import annotations

import sqlalchemy as sa

v5 = sa.MetaData()
When = sa.DateTime(timezone=True)

messages = sa.Table(
    "messages", v5,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("config_id", sa.String(64), nullable=False),
    sa.Column("client_message_id", sa.String(128)),
    sa.Column("mdr_id", sa.String(80), unique=True),
    sa.Column("from_number", sa.String(32), nullable=False),
    sa.Column("to_number", sa.String(32), nullable=False),
    sa.Column("from_extension", sa.String(64)),
    sa.Column("body", sa.Text, nullable=False, default=""),
    sa.Column("is_mms", sa.Boolean, nullable=False, default=False),
    sa.Column("segments", sa.Integer),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason_code", sa.String(64)),
    sa.Column("reason", sa.Text),
    sa.Column("dispatch_state", sa.String(16)),
    sa.Column("send_started_at", When),
    sa.Column("created_at", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
    sa.UniqueConstraint("tenant", "client_message_id", name="uq_messages_tenant_client_id"),
)
sa.Index("ix_messages_updated", messages.c.updated_at)
sa.Index("ix_messages_tenant_id", messages.c.tenant, messages.c.id)
sa.Index("ix_messages_to", messages.c.to_number)
sa.Index("ix_messages_from", messages.c.from_number)

status_history = sa.Table(
    "status_history", v5,
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

deliveries = sa.Table(
    "deliveries", v5,
    sa.Column("mdr_id", sa.String(80), primary_key=True),
    sa.Column("extension", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("lease_until", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
)
sa.Index("ix_deliveries_updated", deliveries.c.updated_at)

delivery_order = sa.Table(
    "delivery_order", v5,
    sa.Column("mdr_id", sa.String(80), primary_key=True),
    sa.Column("extension", sa.String(64), primary_key=True),
    sa.Column("conversation", sa.String(255), nullable=False),
    sa.Column("received_at", When, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", When, nullable=False),
)
sa.Index("ix_delivery_order_turn", delivery_order.c.conversation, delivery_order.c.state,
         delivery_order.c.received_at)
sa.Index("ix_delivery_order_updated", delivery_order.c.updated_at)


def as_at_version_5(c: sa.Connection) -> None:
    """Turn a ledger just created at the latest version into one release 5 created (empty)."""
    for name in ("status_history", "delivery_order", "deliveries", "messages"):
        c.execute(sa.text(f"DROP TABLE {name}"))
    v5.create_all(c)
    c.execute(sa.text("DELETE FROM smsbridge_schema WHERE version > 5"))
