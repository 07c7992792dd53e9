"""The ledger: what must outlive a message (dedupe, idempotency, correlation, history).

SQLite (one host, WAL) or PostgreSQL (several hosts), one schema, the same code: SQLAlchemy
Core expressions, never SQL strings.
"""

from smsbridge.ledger.store import Claim, Ledger, MessageRow, StatusRow, open_from_settings

__all__ = ["Claim", "Ledger", "MessageRow", "StatusRow", "open_from_settings"]
