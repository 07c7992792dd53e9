"""JSON log lines to a binary stream, written once per event-loop pass instead of once per line.

A receiver under load logs a line per webhook, and writing and flushing each line costs a system
call per line. On an event loop, `LineWriter` gathers the lines and writes them together
(`call_soon`), so a line reaches the stream at the end of the loop pass that logged it.
Off the loop (start-up, other threads, after a loop has stopped) a line is written at once,
together with any lines still waiting. `flush` also runs at exit, so an orderly stop loses no
line; a SIGKILL can lose the lines of the one pass it interrupts.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from typing import BinaryIO


class LineWriter:
    """A structlog logger (the object at the end of the chain) that takes rendered bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None  # the loop with a flush to run
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._lines.append(message)
            if loop is not None and self._scheduled_on is loop:
                return
            if loop is not None and self._scheduled_on is None:
                self._scheduled_on = loop
                loop.call_soon(self.flush)
                return
        # Off the loop, or a loop stopped before its flush ran: write everything now.
        self.flush()

    log = debug = info = warn = warning = msg
    failure = err = error = critical = exception = fatal = msg

    def flush(self) -> None:
        with self._lock:
            self._scheduled_on = None
            if not self._lines or self._stream.closed:  # at exit, a test's stream may be gone
                return
            lines, self._lines = self._lines, []
            lines.append(b"")
            self._stream.write(b"\n".join(lines))
            self._stream.flush()
