"""Several hosts on one machine: a network namespace per host, on one Linux bridge.

Each "host" is a network namespace of its own (its own loopback, ports, epmd and nftables)
joined to the bridge `sbf0` in the root namespace by a veth pair, with an address in
10.231.0.0/24. The runner itself (load, Flowroute simulator, sandbox PBX) stays in the root
namespace and is reached on the bridge's address, 10.231.0.1. A partition is an nftables table
inside one host's namespace that drops its traffic to and from some peers; deleting the table
heals it. Nothing here touches the root namespace's firewall or the machine's own services.

Everything is removed by `remove()`: the processes still inside our namespaces (by PID, from
`ip netns pids`), the namespaces (their veth ends go with them) and the bridge. A run that
died without it is cleaned up by the next one (`create()` removes leftovers of our names first).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import dataclass

BRIDGE = "sbf0"
SUBNET = "10.231.0"
GATEWAY = f"{SUBNET}.1"  # the bridge's address: the runner, the simulator and the PBX
PREFIX = "sbf-"  # every namespace we make is named sbf-<host>; veth ends in the root: sbfv-<host>
PARTITION_TABLE = "sbf_partition"
TOOLS = {"ip": "iproute2", "nft": "nftables"}


@dataclass(frozen=True)
class Host:
    """One simulated host: a network namespace with one address on the bridge."""

    name: str
    address: str

    @property
    def netns(self) -> str:
        return PREFIX + self.name

    @property
    def veth(self) -> str:
        return f"sbfv-{self.name}"[:15]  # interface names are at most 15 bytes

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host's namespace (`ip netns exec` execs it: same PID)."""
        return ["ip", "netns", "exec", self.netns, *argv]


def plan(names: list[str], first: int = 11) -> dict[str, Host]:
    """One address per host, in order from `first`: 10.231.0.<first>, <first + 1>, ..."""
    if first < 2 or first + len(names) > 255:
        raise ValueError(f"addresses {first}..{first + len(names) - 1} do not fit in {SUBNET}.2-254")
    if len(set(names)) != len(names):
        raise ValueError("host names must be unique")
    return {name: Host(name, f"{SUBNET}.{first + i}") for i, name in enumerate(names)}


def partition_rules(peers: list[str]) -> str:
    """An nftables script for one host's namespace: drop every packet to or from `peers`."""
    if not peers:
        raise ValueError("a partition needs at least one peer to cut off")
    addresses = "{ " + ", ".join(peers) + " }"
    chain = "type filter hook {hook} priority 0; policy accept; ip {field} {addresses} drop;"
    return (f"table inet {PARTITION_TABLE} {{\n"
            f"  chain input {{ {chain.format(hook='input', field='saddr', addresses=addresses)} }}\n"
            f"  chain output {{ {chain.format(hook='output', field='daddr', addresses=addresses)} }}\n"
            "}\n")


def missing_requirements() -> list[str]:
    """What stops the suite from making namespaces here, each naming what to do about it."""
    problems = [f"`{tool}` not found: install the Debian package {package}"
                for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if os.geteuid() != 0:
        problems.append("network namespaces, veth pairs and nftables need root: run as root")
    return problems


async def sh(*argv: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {text[-800:]}")
    return text


class Network:
    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}

    async def create(self, hosts: dict[str, Host]) -> None:
        await self.remove_leftovers()
        await sh("ip", "link", "add", BRIDGE, "type", "bridge")
        await sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        await sh("ip", "link", "set", BRIDGE, "up")
        for host in hosts.values():
            await self.add(host)

    async def add(self, host: Host) -> None:
        self.hosts[host.name] = host
        await sh("ip", "netns", "add", host.netns)
        await sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        await sh("ip", "link", "set", host.veth, "master", BRIDGE, "up")
        await sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        await sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        await sh("ip", "-n", host.netns, "link", "set", "lo", "up")

    async def partition(self, host: Host, peers: list[Host]) -> None:
        await sh(*host.command("nft", "-f", "-"), stdin=partition_rules([p.address for p in peers]))

    async def heal(self, host: Host) -> None:
        await sh(*host.command("nft", "delete", "table", "inet", PARTITION_TABLE))

    async def remove_leftovers(self) -> None:
        listed = await sh("ip", "netns", "list", check=False)
        names = [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]
        for name in names:
            await _empty_and_delete(name)
        await _delete_links()

    async def remove(self) -> None:
        """Every process left in our namespaces (SIGKILL by PID), the namespaces, the bridge."""
        for host in list(self.hosts.values()):
            await _empty_and_delete(host.netns)
        self.hosts.clear()
        await _delete_links()


async def _delete_links() -> None:
    """Our veth ends and the bridge. A deleted namespace's veth pair goes with it, but only once
    the kernel has finished with the namespace (it can linger): delete them outright."""
    listed = await sh("ip", "-o", "link", "show", check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in listed.splitlines() if ":" in line]
    for name in names:
        if name.startswith("sbfv-"):
            await sh("ip", "link", "del", name, check=False)
    await sh("ip", "link", "del", BRIDGE, check=False)


async def _empty_and_delete(netns: str) -> None:
    for _ in range(50):
        pids = [int(p) for p in (await sh("ip", "netns", "pids", netns, check=False)).split() if p.isdigit()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await asyncio.sleep(0.1)
    await sh("ip", "netns", "del", netns, check=False)
