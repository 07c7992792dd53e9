"""A 3-node RabbitMQ cluster of the installed broker, each node on a simulated host of its own.

Each node runs in its own network namespace (`faults/netns.py`) with its own epmd, on the
usual ports (AMQP 5672, distribution 25672, epmd 4369) of its own address; its name is a long
name on that address (`sbf1@10.231.0.11`...), so no host name has to resolve anywhere. Each
node has its own data, log and config files and its own HOME holding a copy of the cluster's
Erlang cookie: the nodes share no file. The machine's own RabbitMQ and epmd, in the root
namespace, are never reached. Nodes are stopped by their PID (SIGKILL, as a crash) or with
`rabbitmqctl -n <node> stop`, run inside the node's namespace; never by name.

Partitions: `cluster_partition_handling = pause_minority` (faults/README.md says why) and
`net_ticktime = NET_TICKTIME_S`, so that a node cut off from the others notices within the
partition the suite makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faults.netns import Host

EPMD = "epmd"  # the machine's own epmd program (its protocol has not changed), one per node's host
AMQP_PORT = 5672
# RabbitMQ's default is 60 s (a peer that stops answering is declared down 60-75 s later):
# longer than the suite's 15 s partition, which would then go unnoticed. 8 s: declared down
# 8-10 s in, a few seconds before the heal, while a tick is still sent every 2 s (a busy 2-core
# host answers that in time; the other scenarios would show a false partition if not).
NET_TICKTIME_S = 8
# Ra's failure detector (aten) polls every this many ms; RabbitMQ sets 5000 (aten's own default is
# 1000), so a queue whose leader is cut off waits up to ~5 s before its followers elect another
# (unless the distribution link drops first, after net_ticktime). With each route's channel warmed
# (src/smsbridge/broker/warmup.py) clients are confirmed as soon as the election is over, so the
# election is what bounds the partition's hard case (faults/README.md, "Warmed routes"): 1000 gave
# elections 1.5-2.3 s after the cut (p99 1.0-1.9 s), 500 gives 0.8-1.0 s (faults/README.md, "Ra's
# poll at 500 ms"). None (`--aten-poll-ms 0`): the broker's default. Set in advanced.config:
# RabbitMQ 3.10.8 has no rabbitmq.conf key for it.
ATEN_POLL_INTERVAL_MS: int | None = 500


@dataclass(frozen=True)
class Broker:
    """Which RabbitMQ the nodes run: `/`, the installed packages, or a directory that the Debian
    packages of another version and its Erlang were unpacked into (`dpkg -x`; faults/README.md,
    "Another RabbitMQ"), run from there without touching the machine's own."""

    home: Path = Path("/")

    @property
    def server(self) -> str:
        return str(self.home / "usr/lib/rabbitmq/bin/rabbitmq-server")  # not the sbin wrapper: it changes user

    @property
    def ctl(self) -> str:
        return str(self.home / "usr/lib/rabbitmq/bin/rabbitmqctl")

    def path(self, path: str) -> str:
        """PATH for the broker's scripts, which start `erl` and `escript` from it: this home's first."""
        bin_dir = str(self.home / "usr/bin")
        return path if bin_dir == "/usr/bin" else f"{bin_dir}:{path}"

    def missing(self) -> list[str]:
        """What this home lacks to start a node, each named."""
        if not self.home.is_absolute() or ":" in str(self.home):  # PATH takes it whole, from any directory
            return [f"--rabbitmq-home {self.home}: give an absolute directory without ':'"]
        return [f"{file} not found (--rabbitmq-home {self.home})" for file in (self.server, self.ctl)
                if not Path(file).is_file()]


INSTALLED = Broker()


@dataclass
class Node:
    name: str
    host: Host
    base: Path  # everything of this node's: data, logs, config, HOME
    process: asyncio.subprocess.Process | None = None
    epmd: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host.address}:{AMQP_PORT}/"


class Cluster:
    def __init__(self, root: Path, hosts: list[Host], aten_poll_ms: int | None = ATEN_POLL_INTERVAL_MS,
                 net_ticktime_s: int = NET_TICKTIME_S, broker: Broker = INSTALLED) -> None:
        self.root = root
        self.broker = broker
        self.aten_poll_ms = aten_poll_ms
        self.net_ticktime_s = net_ticktime_s
        self.nodes = [Node(f"sbf{i + 1}@{host.address}", host, root / f"sbf{i + 1}") for i, host in enumerate(hosts)]

    def env(self, node: Node) -> dict[str, str]:
        base = node.base
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "PATH": self.broker.path(os.environ.get("PATH", os.defpath)),
            "HOME": str(base / "home"),  # this node's copy of the cluster's .erlang.cookie
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            "RABBITMQ_USE_LONGNAME": "true",  # name@address: nothing to resolve
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": node.host.address,
            "RABBITMQ_NODE_PORT": str(AMQP_PORT),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONFIG_FILES": str(base / "conf.d"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {" + node.host.address.replace(".", ",") + "}",
            "ERL_EPMD_ADDRESS": f"127.0.0.1,{node.host.address}",
            "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),  # not in the caller's directory
        }

    def _write_files(self) -> None:
        cookie = secrets.token_hex(16).upper()
        for node in self.nodes:
            base = node.base
            (base / "home").mkdir(parents=True, exist_ok=True)
            (base / "home" / ".erlang.cookie").write_text(cookie)
            (base / "home" / ".erlang.cookie").chmod(0o400)
            (base / "rabbitmq-env.conf").write_text("")
            (base / "enabled_plugins").write_text("[].\n")
            (base / "advanced.config").write_text(advanced_config(self.aten_poll_ms))
            (base / "conf.d").mkdir(exist_ok=True)
            (base / "rabbitmq.conf").write_text(
                "loopback_users = none\n"
                "cluster_partition_handling = pause_minority\n"
                f"net_ticktime = {self.net_ticktime_s}\n")

    async def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        proc = await asyncio.create_subprocess_exec(
            *node.host.command(self.broker.ctl, "-n", node.name, *args), env=self.env(node),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: exit {proc.returncode}: {text[-800:]}")
        return text

    async def start_node(self, node: Node) -> None:
        (node.base / "log").mkdir(parents=True, exist_ok=True)
        out = (node.base / "log" / "console.log").open("ab")
        if node.epmd is None or node.epmd.returncode is not None:
            # The host's own epmd, on its loopback and its address (the other nodes ask it for the
            # node's distribution port); started here so that it is ours, stopped by PID.
            node.epmd = await asyncio.create_subprocess_exec(
                *node.host.command(EPMD, "-address", f"127.0.0.1,{node.host.address}"),
                stdout=out, stderr=out, start_new_session=True)
        node.process = await asyncio.create_subprocess_exec(
            *node.host.command(self.broker.server), env=self.env(node), stdout=out, stderr=out, start_new_session=True,
            cwd=node.base)
        # `wait` waits for the PID file and then for the app: `await_startup` fails at once if the
        # VM has not registered with epmd yet.
        await self.ctl(node, "wait", str(node.base / "pid"), "--timeout", "180", timeout=200)

    async def start(self) -> None:
        self._write_files()
        first, *others = self.nodes
        await self.start_node(first)
        for node in others:
            await self.start_node(node)
            await self.ctl(node, "stop_app")
            await self.ctl(node, "join_cluster", first.name)
            await self.ctl(node, "start_app")

    def kill(self, node: Node) -> None:
        """SIGKILL the node's whole process group (the Erlang VM and its helpers): a crash."""
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGKILL)

    async def reap(self, node: Node) -> None:
        if node.process is not None:
            await node.process.wait()
            node.process = None

    async def restart(self, node: Node) -> None:
        await self.reap(node)
        await self.start_node(node)

    async def leaders(self, prefix: str) -> dict[str, str]:
        """Queue name -> the node leading it, for the queues of `prefix` (asked of a live node)."""
        for node in self.nodes:
            if node.process is None or node.process.returncode is not None:
                continue
            try:
                text = await self.ctl(node, "list_queues", "name", "leader", "--formatter", "json", "-q")
            except RuntimeError:
                continue
            return {q["name"]: q.get("leader", "") for q in json.loads(text) if q["name"].startswith(prefix)}
        return {}

    async def move_leader(self, queue: str, to: Node) -> str:
        """Make `to` lead `queue` (vhost /): RabbitMQ 3.10 has no command for one queue
        (`rabbitmq-queues rebalance` spreads them all), but its own function that maintenance mode
        uses to move leaders is there. Returns what it answered (`{migrated, Node}` when done)."""
        expr = (f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{queue}">>)), '
                f"rabbit_quorum_queue:transfer_leadership(Q, '{to.name}').")
        return (await self.ctl(to, "eval", expr)).strip()

    async def version(self) -> str:
        """The broker's and Erlang's versions, asked of the first node (for the run's header)."""
        expr = ('list_to_binary(["RabbitMQ ", rabbit_misc:version(), '
                '" on Erlang/OTP ", erlang:system_info(otp_release)]).')
        return (await self.ctl(self.nodes[0], "eval", expr)).strip().strip('<>"')

    def logs(self) -> dict[str, Path]:
        """Each node's main log file (its leader elections: faults/elections.py)."""
        return {node.name: node.base / "log" / f"{node.name}.log" for node in self.nodes}

    def by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.returncode is None:
                try:
                    await self.ctl(node, "stop", timeout=60)
                except (RuntimeError, TimeoutError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                await self.reap(node)
            if node.epmd is not None and node.epmd.returncode is None:
                node.epmd.kill()
                await node.epmd.wait()

    async def whole(self, prefix: str) -> str | None:
        """None when every node runs, none reports a partition and every queue of `prefix` has a
        member on each node, all online; otherwise what is missing."""
        size = len(self.nodes)
        for node in self.nodes:
            try:
                status = json.loads(await self.ctl(node, "cluster_status", "--formatter", "json", "-q", timeout=60))
                queues = json.loads(await self.ctl(node, "list_queues", "name", "members", "online",
                                                   "--formatter", "json", "-q", timeout=60))
            except (RuntimeError, TimeoutError, ValueError):
                continue
            return cluster_problem(status, [q for q in queues if q["name"].startswith(prefix)], size)
        return "no node answers rabbitmqctl"


def advanced_config(aten_poll_ms: int | None) -> str:
    """The nodes' advanced.config: Ra's failure detector poll interval if one is given."""
    if aten_poll_ms is None:
        return "[].\n"
    return f"[{{aten, [{{poll_interval, {int(aten_poll_ms)}}}]}}].\n"


def cluster_problem(status: dict[str, Any], queues: list[dict[str, Any]], size: int) -> str | None:
    """What keeps a cluster from being whole, from `cluster_status` and `list_queues name members
    online` (both as JSON); None when it is whole."""
    running = status.get("running_nodes", [])
    if len(running) < size:
        return f"{len(running)} of {size} nodes running"
    partitions = status.get("partitions") or {}
    if any(partitions.values()) if isinstance(partitions, dict) else partitions:
        return f"partitions reported: {partitions}"
    short = sorted(q["name"] for q in queues
                   if len(q.get("members") or []) < size or len(q.get("online") or []) < size)
    if short:
        return f"{len(short)} queue(s) without {size} members online, e.g. {short[0]}"
    return None
