"""Loopback ports for servers that another process will start (tests, benchmarks, demos)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, never the same one twice in this process.

    Taken below the kernel's ephemeral range: a port from that range (what binding port 0 gives)
    can be taken by any outgoing connection before the other process binds it, and was (a test's
    bridge died with "address already in use")."""
    low, high = _BELOW_EPHEMERAL
    for _ in range(1000 if high > low else 0):
        port = random.randrange(low, high)
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: take what the kernel gives
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _below_ephemeral() -> tuple[int, int]:
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    return max(1024, ephemeral - 10000), ephemeral


_BELOW_EPHEMERAL = _below_ephemeral()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
