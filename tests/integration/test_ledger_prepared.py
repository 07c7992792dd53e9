"""The fast path for the ledger's hot statements (`ledger/prepared.py`) reads and writes
exactly what `Connection.execute` does, and fails the way it does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from smsbridge.ledger import claims, ops, order, schema
from smsbridge.ledger.claims import DeliveryKey
from smsbridge.ledger.prepared import execute
from smsbridge.ledger.runner import _sqlite_connect

NOW = datetime(2026, 11, 30, 15, 30, 1, 123456, tzinfo=UTC)
ROW = {"config_id": "main", "mdr_id": "mdr2-a", "extension": "101", "conversation": "main|+12065550100|+12065550199",
       "received_at": NOW, "state": "waiting", "body": b"\x00{\"body\":\"hi\"}", "updated_at": NOW}
A = DeliveryKey("main", "mdr2-a", "101").params()
B = DeliveryKey("main", "mdr2-b", "101")


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sa.Connection]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    sa.event.listen(engine, "connect", _sqlite_connect)
    with engine.begin() as c:
        schema.upgrade(c)
        yield c
    engine.dispose()


def test_a_row_written_on_the_fast_path_reads_back_the_same_both_ways(connection: sa.Connection) -> None:
    inserted = execute(connection, order._NEW["sqlite"], ROW)
    assert inserted.rowcount == 1
    assert execute(connection, order._NEW["sqlite"], ROW).rowcount == 0  # ON CONFLICT DO NOTHING
    fast = execute(connection, order._HEAD, {"conversation": ROW["conversation"]}).first()
    slow = connection.execute(order._HEAD, {"conversation": ROW["conversation"]}).first()
    assert fast is not None and slow is not None
    assert (fast.config_id, fast.mdr_id, fast.extension, fast.state, bytes(fast.body)) == tuple(slow) == (
        "main", "mdr2-a", "101", "waiting", ROW["body"])
    # a DateTime goes in and comes out as SQLAlchemy stores it (the text SQLite compares)
    stored = connection.exec_driver_sql("SELECT received_at FROM delivery_order").scalar()
    assert stored == "2026-11-30 15:30:01.123456"
    back = execute(connection, order._ROW, A).one()
    assert back.updated_at == connection.execute(order._ROW, A).one().updated_at
    assert ops.utc(back.updated_at) == NOW
    assert back._mapping == dict(connection.execute(order._ROW, A).one()._mapping)


def test_literal_values_and_returning_work_as_through_sqlalchemy(connection: sa.Connection) -> None:
    lease = NOW + timedelta(seconds=30)
    assert claims.claim_delivery(connection, B, NOW, lease) is claims.Claim.NEW
    assert claims.claim_delivery(connection, B, NOW, lease) is claims.Claim.BUSY  # read back the lease
    assert claims.claim_delivery(connection, B, lease + timedelta(seconds=1),
                                 lease + timedelta(seconds=31)) is claims.Claim.NEW  # lease ran out: taken over
    claims.delivered(connection, B, NOW)
    assert connection.exec_driver_sql("SELECT state FROM deliveries").scalar() == "delivered"  # `state` literal
    assert claims.claim_delivery(connection, B, NOW, lease) is claims.Claim.DONE
    assert execute(connection, order._HEAD, {"conversation": "nobody"}).first() is None
    assert execute(connection, order._HEAD, {"conversation": "nobody"}).scalar() is None


def test_a_failed_statement_is_sqlalchemys_error_without_its_parameters(connection: sa.Connection) -> None:
    secret = {**ROW, "mdr_id": None, "conversation": "+12065550199 says something private"}
    with pytest.raises(sa.exc.IntegrityError) as caught:
        execute(connection, order._NEW["sqlite"], secret)
    assert "NOT NULL" in str(caught.value)
    assert "+12065550199" not in str(caught.value) and "private" not in str(caught.value)
