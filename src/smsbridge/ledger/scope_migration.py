"""Migration 6: Flowroute ids scoped per SMS configuration.

Up to release 5 `messages.mdr_id` was unique across the ledger, and delivery claims and the order
of deliveries were keyed by (Flowroute id, extension). A second configuration's text carrying an
id the first one had (hostile, a replay, a buggy sender) was then dropped, or its claim taken for
the first one's. From 6 on an id is unique per (configuration, direction), and claims and order
rows carry the configuration.

It runs inside `schema.upgrade`'s transaction, on a ledger that may hold rows; each step checks
the table's shape first, so a ledger whose tables migration 1 already created in the new shape,
or one migrated before, is left alone. PostgreSQL changes the tables in place. SQLite cannot
drop a UNIQUE or change a primary key, so it rebuilds each table (new table, copy, drop, rename);
`status_history` refers to `messages` with ON DELETE CASCADE and foreign keys are on (they cannot
be switched off inside a transaction), so its rows are kept aside while `messages` is replaced.
The tables are passed in (from `schema`) so that this module does not import it back.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

_LEGACY_UNIQUE = ["mdr_id"]


def scope_ids(c: sa.Connection, messages: sa.Table, history: sa.Table, deliveries: sa.Table,
              order: sa.Table) -> None:
    """Bring the four tables to their release-6 shape, keeping every row."""
    inspector = sa.inspect(c)
    if any(u["column_names"] == _LEGACY_UNIQUE for u in inspector.get_unique_constraints(messages.name)):
        _messages(c, messages, history)
    # The order table first: a claim's configuration is read from its order row.
    if "config_id" not in {column["name"] for column in inspector.get_columns(order.name)}:
        _add_config(c, order, _config_of_conversation(c))
    if "config_id" not in {column["name"] for column in inspector.get_columns(deliveries.name)}:
        _add_config(c, deliveries, _config_of_claim(deliveries, order, messages))


def _messages(c: sa.Connection, messages: sa.Table, history: sa.Table) -> None:
    if c.dialect.name == "postgresql":
        for unique in sa.inspect(c).get_unique_constraints(messages.name):
            if unique["column_names"] == _LEGACY_UNIQUE:
                c.execute(sa.text(f'ALTER TABLE {messages.name} DROP CONSTRAINT "{unique["name"]}"'))
        (scoped,) = [u for u in messages.constraints
                     if isinstance(u, sa.UniqueConstraint) and u.columns.keys()[0] == "mdr_id"]
        _add_constraint(c, messages, scoped, "UNIQUE")
        return
    kept = f"{history.name}_kept_v5"
    c.execute(sa.text(f"CREATE TEMP TABLE {kept} AS SELECT * FROM {history.name}"))
    c.execute(sa.delete(history))  # else dropping `messages` would delete them (ON DELETE CASCADE)
    _rebuild_sqlite(c, messages, {})
    c.execute(sa.text(f"INSERT INTO {history.name} SELECT * FROM temp.{kept}"))
    c.execute(sa.text(f"DROP TABLE temp.{kept}"))


def _add_config(c: sa.Connection, table: sa.Table, config: Any) -> None:
    """Give `table` its `config_id` (the value of the expression `config` over its old row) and
    the primary key that includes it."""
    if c.dialect.name != "postgresql":
        _rebuild_sqlite(c, table, {"config_id": config})
        return
    c.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN config_id VARCHAR(64) NOT NULL DEFAULT ''"))
    c.execute(sa.update(table).values(config_id=config))
    c.execute(sa.text(f"ALTER TABLE {table.name} ALTER COLUMN config_id DROP DEFAULT"))
    old_key = sa.inspect(c).get_pk_constraint(table.name)["name"]
    c.execute(sa.text(f'ALTER TABLE {table.name} DROP CONSTRAINT "{old_key}"'))
    _add_constraint(c, table, table.primary_key, "PRIMARY KEY")


def _add_constraint(c: sa.Connection, table: sa.Table, constraint: sa.UniqueConstraint | sa.PrimaryKeyConstraint,
                    kind: str) -> None:
    """ALTER TABLE … ADD CONSTRAINT, written out: SQLAlchemy's `AddConstraint` would mark the
    table's own constraint as added separately, and every later CREATE TABLE of it in this
    process (a new ledger) would leave it out."""
    columns = ", ".join(constraint.columns.keys())
    c.execute(sa.text(f"ALTER TABLE {table.name} ADD CONSTRAINT {constraint.name} {kind} ({columns})"))


def _rebuild_sqlite(c: sa.Connection, table: sa.Table, new_values: dict[str, Any]) -> None:
    """The SQLite way to change a table's constraints: create it anew beside the old one, copy
    the rows (with `new_values` for new columns, expressions over the old table, which is named
    as the table while they run), drop the old table, rename the new one, index it again."""
    building = f"{table.name}_v6"
    c.execute(sa.schema.CreateTable(table.to_metadata(sa.MetaData(), name=building)))
    columns = [column.name for column in table.columns]
    old = sa.table(table.name, *(sa.column(name) for name in columns if name not in new_values))
    values = [new_values[name] if name in new_values else old.c[name] for name in columns]
    c.execute(sa.insert(sa.table(building, *(sa.column(name) for name in columns)))
              .from_select(columns, sa.select(*values).select_from(old)))
    c.execute(sa.text(f"DROP TABLE {table.name}"))
    c.execute(sa.text(f"ALTER TABLE {building} RENAME TO {table.name}"))
    for index in table.indexes:
        c.execute(sa.schema.CreateIndex(index))


def _config_of_conversation(c: sa.Connection) -> Any:
    """An order row's conversation begins with its configuration's id (`InboundDelivery.conversation`),
    which has no ':' (`config.Ident`)."""
    conversation = sa.column("conversation", sa.String)
    if c.dialect.name == "postgresql":
        return sa.func.split_part(conversation, ":", 1)
    return sa.func.substr(conversation, 1, sa.func.instr(conversation, ":") - 1)


def _config_of_claim(deliveries: sa.Table, order: sa.Table, messages: sa.Table) -> Any:
    """A claim's configuration: its text's order row's, else its inbound message's (ids were
    unique across the ledger until now), else none known ('': such a claim, from before the
    order table or outliving both rows, stops nothing; the text's redelivery claims anew)."""
    # the claim's own id, in the statement these subqueries are part of
    mdr_id: sa.ColumnElement[str] = sa.literal_column(f"{deliveries.name}.mdr_id")
    extension: sa.ColumnElement[str] = sa.literal_column(f"{deliveries.name}.extension")
    # (id, extension) was the order table's key: one id could be two configurations' to two extensions
    from_order = (sa.select(order.c.config_id).where((order.c.mdr_id == mdr_id) & (order.c.extension == extension))
                  .scalar_subquery())
    from_message = (sa.select(messages.c.config_id)
                    .where((messages.c.mdr_id == mdr_id) & (messages.c.direction == "inbound"))
                    .limit(1).scalar_subquery())
    return sa.func.coalesce(from_order, from_message, "")
