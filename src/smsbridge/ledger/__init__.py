"""The ledger: what must outlive a message (dedupe, idempotency, correlation, history).

SQLite (one host, WAL) or PostgreSQL (several hosts), one schema, the same code: SQLAlchemy
Core expressions, never SQL strings. `store` is what workers call, `ops` (and `claims`, `order`, …) the transactions,
`runner` how they reach the database, `schema` the tables and migrations.
"""

from smsbridge.ledger.store import (
    Claim,
    DeliveryKey,
    Ledger,
    MessageRow,
    RelaySend,
    Retaken,
    Scope,
    StatusRow,
    open_from_settings,
)

__all__ = ["Claim", "DeliveryKey", "Ledger", "MessageRow", "RelaySend", "Retaken", "Scope", "StatusRow",
           "open_from_settings"]
