"""Ports handed to servers in other processes stay out of the range outgoing connections use."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.ports import free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(port < low for port in ports) or low <= 1024
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free when handed out
