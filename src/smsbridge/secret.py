"""A string that refuses to show itself: Flowroute keys, webhook tokens, PBX credentials.

`repr`, `str` and f-strings print a mask, so a secret that reaches a log line or an error
body by accident stays hidden. Code that really needs the value calls `reveal()`.
"""

from __future__ import annotations

import hmac

MASK = "********"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison, so a wrong guess takes as long as a right one."""
        return hmac.compare_digest(self._value.encode(), candidate.encode())

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
