"""A 3-node RabbitMQ cluster of the installed broker, on loopback, all of its own.

Each node has its own name (`sbf1@localhost`...), AMQP and distribution ports, data, log and
config files, and the cluster its own Erlang cookie (in a temporary HOME), so nothing here can
reach the machine's own RabbitMQ (rabbit@<host> on 5672/25672). Nodes are stopped by their
PID (SIGKILL, as a crash) or with `rabbitmqctl -n <node> stop`; never by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the script itself: the sbin wrapper would change user
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


@dataclass
class Node:
    name: str
    amqp_port: int
    dist_port: int
    base: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"


class Cluster:
    def __init__(self, root: Path, *, first_port: int = 27672, size: int = 3) -> None:
        self.root = root
        self.home = root / "home"
        self.nodes = [Node(f"sbf{i + 1}@localhost", first_port + i, first_port + 100 + i, root / f"sbf{i + 1}")
                      for i in range(size)]

    def env(self, node: Node) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(self.home),  # the cluster's own .erlang.cookie
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.base / "log"),
            "RABBITMQ_PID_FILE": str(node.base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_CONFIG_FILES": str(self.root / "conf.d"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": str(node.base / "erl_crash.dump"),  # not in the caller's directory
        }

    def _write_files(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "advanced.config").write_text("[].\n")
        (self.root / "conf.d").mkdir(exist_ok=True)
        (self.root / "rabbitmq.conf").write_text("loopback_users = none\n")

    async def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        proc = await asyncio.create_subprocess_exec(
            CTL, "-n", node.name, *args, env=self.env(node),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: exit {proc.returncode}: {text[-800:]}")
        return text

    async def start_node(self, node: Node) -> None:
        (node.base / "log").mkdir(parents=True, exist_ok=True)
        out = (node.base / "log" / "console.log").open("ab")
        node.process = await asyncio.create_subprocess_exec(
            SERVER, env=self.env(node), stdout=out, stderr=out, start_new_session=True, cwd=node.base)
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
