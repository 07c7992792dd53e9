"""`make faults`: the bridge's roles as processes on a 3-node RabbitMQ cluster and PostgreSQL of
their own, each on a simulated host (a network namespace), a steady load, one fault per
scenario, and a table of what clients and the PBX saw.

Usage: python -m faults.run [--only NAME ...] [--seconds S]. Needs root, `ip` (iproute2) and
`nft` (nftables). Everything it starts lives under one temporary directory and in namespaces
of its own, and is stopped and removed at the end, also on Ctrl-C or a failure (processes by
PID, RabbitMQ nodes by PID or `rabbitmqctl -n`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from faults import elections
from faults.cluster import AMQP_PORT, ATEN_POLL_INTERVAL_MS, INSTALLED, NET_TICKTIME_S, Broker, Cluster, Node
from faults.load import Load, outcome, readiness_note
from faults.netns import GATEWAY, Host, Network, missing_requirements, plan
from faults.postgres import Postgres
from smsbridge import logs
from smsbridge.config import LoggingSettings
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.sandbox.pbx import FakePbx
from smsbridge.testing.config import bridge_document, merge, secrets_env, write

ENV = secrets_env("FAULTS", webhook_token="faults-token-0123456789abcdefghij")
TOKEN = ENV["FAULTS_TOKEN"]
ROLES = ("inbound", "delivery", "outbound", "dispatcher")
RECEIVER_PORT = 8080  # each receiver on its own host's address
# The simulated hosts: three RabbitMQ nodes, PostgreSQL, and one host per bridge process.
NODES = plan(["rmq1", "rmq2", "rmq3"], first=11)
DATABASE = plan(["pg"], first=20)["pg"]
PROCESSES = plan(["receiver-1", "receiver-2", *ROLES], first=31)
# Patient retries: texts must outlast a PBX outage without being dead-lettered.
RETRY = {"retry": {"delivery": {"max_attempts": 200, "base_delay_s": 0.5, "max_delay_s": 2.0},
                   "dispatch": {"max_attempts": 50, "base_delay_s": 0.5, "max_delay_s": 2.0}}}
TARGETS = {"503": 0, "other": 0, "lost": 0, "dup@PBX": 0, "dup, new key": 0, "out of order": 0, "sent twice": 0,
           "never sent": 0, "429": 0}
# Where a process dies (or loses the ledger) between the PBX's answer and recording it, the text
# goes to the PBX again, with the same idempotency key (README, Guarantees): allowed there only.
DUPLICATES_ALLOWED = {"roles", "postgres"}
P99_TARGET_MS = 1000.0  # webhook answers, every scenario (issue 23: p99 < 1 s while a node dies)
PBX_DOWN_S = 60.0  # as the issue asks; the whole run stays well under 15 minutes on 2 cores
PARTITION_S = 15.0  # how long one node stays cut off from the other two
PAUSED_HANG_S = 45.0  # a paused node not taking clients this long after the heal has hung
WHOLE_WITHIN_S = 180.0  # after each scenario the cluster must be whole again within this


def _p99_ok(p99: object) -> bool:
    """Under the target; a scenario where no webhook was answered has no p99 and misses it."""
    return isinstance(p99, int | float) and p99 < P99_TARGET_MS


class Bridge:
    """The bridge's roles as `smsbridge run` processes: two receivers and one process per worker role."""

    def __init__(self, root: Path, urls: list[str], prefix: str, ledger_url: str, flowroute: str, pbx: str) -> None:
        self.root = root
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.configs: dict[str, Path] = {}
        for name, host in PROCESSES.items():  # a file each: on separate hosts nothing is shared
            doc = bridge_document(amqp_url=urls[0], prefix=prefix, ledger_url=ledger_url, port=RECEIVER_PORT,
                                  secrets="FAULTS", api_base=flowroute, pbx_url=pbx)
            doc = merge(doc, RETRY, {"broker": {"urls": urls}, "logging": {"format": "json"},
                                     "receiver": {"host": host.address,
                                                  "public_url": f"http://{host.address}:{RECEIVER_PORT}"},
                                     "ledger": {"schema": "faults"}})
            self.configs[name] = write(root / f"{name}.toml", doc)

    @property
    def receivers(self) -> list[str]:
        return [f"http://{PROCESSES[name].address}:{RECEIVER_PORT}/webhooks/flowroute/main/{TOKEN}"
                for name in ("receiver-1", "receiver-2")]

    async def start(self, name: str) -> None:
        role = "receiver" if name.startswith("receiver") else name
        log = (self.root / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            *PROCESSES[name].command(sys.executable, "-m", "smsbridge", "run", "--config", str(self.configs[name]),
                                     "--role", role),
            env={**os.environ, **ENV}, stdout=log, stderr=log)
        self.processes[name] = proc
        await self._ready(name)

    async def _ready(self, name: str, timeout: float = 120) -> None:
        deadline, log = time.monotonic() + timeout, self.root / f"{name}.log"
        while time.monotonic() < deadline:
            if self.processes[name].returncode is not None:
                raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
            if '"bridge started"' in log.read_text():
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{name} never started: {log.read_text()[-2000:]}")

    async def start_all(self) -> None:
        await self.start("receiver-1")  # migrates the ledger alone, before the others start
        await asyncio.gather(self.start("receiver-2"), *(self.start(r) for r in ROLES))

    async def kill_and_restart(self, name: str) -> None:
        self.processes[name].kill()
        await self.processes[name].wait()
        (self.root / f"{name}.log").open("a").write('\n{"event": "--- SIGKILLed by faults ---"}\n')
        await self.start(name)

    async def stop(self) -> None:
        for proc in self.processes.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()


class Run:
    def __init__(self, root: Path, seconds: float, network: Network, aten_poll_ms: int | None = ATEN_POLL_INTERVAL_MS,
                 leader_on_cut: bool = False, net_ticktime_s: int = NET_TICKTIME_S, broker: Broker = INSTALLED) -> None:
        self.root = root
        self.seconds = seconds
        self.network = network
        self.cluster = Cluster(root / "rabbitmq", list(NODES.values()), aten_poll_ms, net_ticktime_s, broker)
        self.leader_on_cut = leader_on_cut  # partition: move the inbound queue's leader to the cut node first
        self.fault_windows: list[tuple[float, float]] = []  # wall clock, each fault until the cluster was whole
        self.postgres = Postgres(root, DATABASE)
        self.pbx = FakePbx()
        self.flowroute = FlowrouteSimulator({"AK-test": "SK-test"}, numbers={"AK-test": ["+12065550100"]})
        self.prefix = f"faults{int(time.time())}"
        self.bridge: Bridge | None = None
        self.pbx_port = 0
        self.delivered_at: dict[str, float] = {}
        self.rows: list[tuple[str, str, dict[str, object]]] = []
        self._restarts: list[asyncio.Task[None]] = []
        self._notes: list[str] = []  # what background checks found, added to the scenario's line

    async def start(self) -> None:
        await self.network.create({**NODES, "pg": DATABASE, **PROCESSES})
        await asyncio.gather(self.cluster.start(), self.postgres.start())
        print(f"broker: {await self.cluster.version()}", flush=True)
        await self.postgres.psql("CREATE SCHEMA IF NOT EXISTS faults")
        await self.pbx.start(host=GATEWAY)
        self.pbx_port = int(self.pbx.url.split(":")[2].split("/")[0])
        await self.flowroute.start(host=GATEWAY)
        urls = [n.url for n in self.cluster.nodes]
        self.bridge = Bridge(self.root, urls, self.prefix, self.postgres.url, self.flowroute.url, self.pbx.url)
        await self.bridge.start_all()
        await self.wait_cluster_whole()

    async def watch_pbx(self) -> None:
        """When each text reached the PBX (the sandbox PBX does not keep the time)."""
        seen = 0
        while True:
            for delivery in self.pbx.received[seen:]:
                self.delivered_at.setdefault(str(delivery.get("mdr_id")), time.monotonic())
            seen = len(self.pbx.received)
            await asyncio.sleep(0.05)

    async def scenario(self, name: str, fault: Callable[[], Awaitable[str]], fault_s: float = 0.0) -> None:
        """Load for `seconds` (or until 10 s after a fault that lasts `fault_s`); the fault at a
        third of `seconds`; then wait until every text arrived."""
        assert self.bridge is not None
        run = f"{len(self.rows):02d}{name[:6]}".replace("-", "")
        if name == "partition" and self.leader_on_cut:
            # before the load: moving a leader takes 5-20 s on a busy host, which would push the
            # cut past the load's end
            await self._lead(f"{self.prefix}.inbound", self._connected_node())
        load = Load(self.bridge.receivers, [n.url for n in self.cluster.nodes], self.prefix, run)
        # texts keep coming after a long fault ends, so that `recover s` has texts to measure
        driving = asyncio.create_task(load.drive(max(self.seconds, self.seconds / 3 + fault_s + 10)))
        await asyncio.sleep(self.seconds / 3)  # the fault's moment, not a wait for a condition
        fault_start, fault_wall = time.monotonic(), time.time()
        what = await fault()
        fault_end = time.monotonic()
        await driving
        for _ in range(240):  # up to 2 minutes for the backlog to reach the PBX and Flowroute
            if self._settled(load):
                break
            await asyncio.sleep(0.5)
        row = outcome(load, self.pbx, self.flowroute, (fault_start, fault_end), self.delivered_at)
        what = "; ".join([what, readiness_note(load.figures.readiness)])
        try:
            await self.wait_cluster_whole()
        except RuntimeError as exc:  # the run stops here: the scenario's figures are still worth having
            self._record(name, "; ".join([what, *self._notes, str(exc)]), row)
            raise
        self.fault_windows.append((fault_wall, time.time()))
        self._record(name, "; ".join([what, *self._notes]), row)

    def _record(self, name: str, what: str, row: dict[str, object]) -> None:
        self._notes.clear()
        self.rows.append((name, what, row))
        print(f"{name}: {what}: {row}", flush=True)

    def _settled(self, load: Load) -> bool:
        row = outcome(load, self.pbx, self.flowroute, (0.0, 0.0), self.delivered_at)
        return row["lost"] == 0 and row["never sent"] == 0

    # ----- the faults --------------------------------------------------------------------------
    def _connected_node(self) -> Node:
        """The node receiver-1's first connection uses: its log says where it (re)connected last."""
        return self.cluster.nodes[0]

    async def kill_connected(self) -> str:
        node = self._connected_node()
        self.cluster.kill(node)
        self._spawn_restart(node)
        return f"SIGKILL {node.name} (every process's first connection)"

    async def kill_leader(self) -> str:
        leaders = await self.cluster.leaders(self.prefix)
        queue = f"{self.prefix}.inbound"
        node = self.cluster.by_name(leaders[queue])
        self.cluster.kill(node)
        self._spawn_restart(node)
        held = sorted(q.removeprefix(self.prefix + ".") for q, n in leaders.items() if n == node.name)
        return f"SIGKILL {node.name}, leader of {', '.join(held)}"

    async def kill_follower(self) -> str:
        leaders = await self.cluster.leaders(self.prefix)
        work = [f"{self.prefix}.{q}" for q in ("inbound", "delivery", "outbound", "dispatch.test")]
        busy = {leaders.get(q) for q in work}
        node = min(self.cluster.nodes, key=lambda n: (n.name in busy, sum(v == n.name for v in leaders.values())))
        self.cluster.kill(node)
        self._spawn_restart(node)
        held = sorted(q.removeprefix(self.prefix + ".") for q, n in leaders.items() if n == node.name)
        return f"SIGKILL {node.name}, follower of the work queues (leader of {', '.join(held) or 'none'})"

    def _spawn_restart(self, node: Node) -> None:
        self._restarts.append(asyncio.create_task(self._restart_later(node)))

    async def _restart_later(self, node: Node) -> None:
        await asyncio.sleep(15.0)  # the node stays down this long: the outage being measured
        await self.cluster.restart(node)

    async def kill_roles(self) -> str:
        assert self.bridge is not None
        for name in ("receiver-1", "inbound", "delivery", "outbound", "dispatcher"):
            await self.bridge.kill_and_restart(name)
            await asyncio.sleep(2.0)  # a little load between two kills
        return "SIGKILL receiver-1, inbound, delivery, outbound, dispatcher in turn (each restarted)"

    async def partition(self) -> str:
        """Cut the connected node off from the other two (clients still reach it), heal after
        PARTITION_S. With pause_minority the node pauses (closes its AMQP port) once it sees it
        is alone, and comes back by itself after the heal."""
        node = self._connected_node()
        inbound = f"{self.prefix}.inbound"
        led_by = (await self.cluster.leaders(self.prefix)).get(inbound, "?")
        peers = [n.host for n in self.cluster.nodes if n is not node]
        await self.network.partition(node.host, peers)
        cut, cut_wall, paused_at = time.monotonic(), time.time(), None
        try:
            while time.monotonic() - cut < PARTITION_S:
                if paused_at is None and not await _amqp_open(node.host):
                    paused_at = time.monotonic() - cut
                await asyncio.sleep(0.5)
        finally:
            await self.network.heal(node.host)
        self._restarts.append(asyncio.create_task(self._note_back(node, time.monotonic())))
        paused = f"paused (AMQP port closed) {paused_at:.1f} s in" if paused_at is not None else "never paused"
        return (f"{node.name} cut off from the other nodes for {PARTITION_S:g} s (clients still reach it), {paused}; "
                + self._election_note(inbound, led_by, node, cut_wall))

    async def _lead(self, queue: str, node: Node) -> None:
        """Move `queue`'s leader to `node` and wait until the cluster says so (`--leader-on-cut-node`:
        the partition's hard case, where no route can commit a webhook until the other two elect)."""
        for _ in range(20):
            if (await self.cluster.leaders(self.prefix)).get(queue) == node.name:
                return
            await self.cluster.move_leader(queue, node)
            await asyncio.sleep(1.0)
        raise RuntimeError(f"could not move the leader of {queue} to {node.name}")

    def _election_note(self, queue: str, led_by: str, cut: Node, since: float) -> str:
        """Who led `queue` at the cut and, if the cut node did, how long its new election took."""
        short = queue.removeprefix(self.prefix + ".")
        if led_by != cut.name:
            return f"{short} led by {led_by}, not cut off"
        found = elections.election_after(elections.read(self.cluster.logs()), queue, since)
        if found is None:
            return f"{short} led by the cut node; no new leader elected during the partition"
        after, leader, cause = found
        why = {"aten": "failure detector", "link": "distribution link down"}.get(cause, "cause not logged")
        return f"{short} led by the cut node; new leader {leader} {after:.1f} s after the cut ({why})"

    async def _note_back(self, node: Node, healed: float) -> None:
        """When the paused node takes clients again; if its restart hangs (faults/README.md,
        "The partition"), what an operator would do: restart it (SIGKILL, start)."""
        while not await _amqp_open(node.host):
            if time.monotonic() - healed > PAUSED_HANG_S:
                self._notes.append(f"{node.name} still not taking clients {PAUSED_HANG_S:g} s after the heal "
                                   "(its restart hung): SIGKILLed and started by the suite")
                self.cluster.kill(node)
                await self.cluster.restart(node)
                self._notes.append(f"{node.name} taking clients {time.monotonic() - healed:.0f} s after the heal")
                return
            await asyncio.sleep(0.5)
        self._notes.append(f"{node.name} taking clients again {time.monotonic() - healed:.1f} s after the heal")

    async def pbx_down(self) -> str:
        await self.pbx.stop()
        await asyncio.sleep(PBX_DOWN_S)  # the outage being measured
        await self.pbx.start(host=GATEWAY, port=self.pbx_port)
        return f"PBX refusing connections for {PBX_DOWN_S:g} s"

    async def postgres_restart(self) -> str:
        await self.postgres.restart()
        return "PostgreSQL stopped (immediate) and started again"

    async def wait_cluster_whole(self) -> None:
        """Restarted nodes back, every node running and every queue with a member on each: the
        next scenario starts from a whole cluster, or the run stops here saying what is wrong."""
        await asyncio.gather(*self._restarts)
        self._restarts.clear()
        deadline, problem = time.monotonic() + WHOLE_WITHIN_S, None
        while time.monotonic() < deadline:
            problem = await self.cluster.whole(self.prefix)
            if problem is None:
                return
            await asyncio.sleep(2.0)
        raise RuntimeError(f"the cluster is not whole {WHOLE_WITHIN_S:g} s after the scenario: {problem}")

    def false_suspicions(self) -> int:
        """Followers that suspected a healthy leader (outside every fault, until the cluster was whole)."""
        return elections.suspicions(elections.read(self.cluster.logs()), self.prefix, self.fault_windows)

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await self.pbx.stop()
        await self.flowroute.stop()
        await asyncio.gather(self.cluster.stop(), self.postgres.stop(), return_exceptions=True)


SCENARIOS = ("connected-node", "leader", "follower", "partition", "roles", "pbx-down", "postgres")


async def _amqp_open(host: Host) -> bool:
    """Whether the node on `host` accepts connections on its AMQP port (a paused node does not)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.address, AMQP_PORT), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def table(rows: list[tuple[str, str, dict[str, object]]]) -> str:
    columns = ["200", "503", "other", "p99 ms", "lost", "dup@PBX", "dup, new key", "out of order", "sent twice",
               "never sent", "429", "e2e s", "recover s"]
    lines = ["| scenario | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    targets = {**TARGETS, "p99 ms": f"< {P99_TARGET_MS:.0f}", "dup@PBX": "0 (†)"}
    lines.append("| target | " + " | ".join(str(targets.get(c, "")) for c in columns) + " |")
    for name, _, row in rows:
        lines.append(f"| {name} | " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |")
    lines.append("")
    lines.append(f"(†) except in {', '.join(sorted(DUPLICATES_ALLOWED))}, with the same idempotency key")
    lines += [f"- {name}: {what}" for name, what, _ in rows]
    return "\n".join(lines)


def log_to_file(root: Path) -> IO[str]:
    """The runner's own log lines (its fake PBX, simulator and load clients; the bridge's
    processes log to files of their own) go to `runner.log` under `root`, as JSON with numbers and
    bodies masked, as any smsbridge process logs; the terminal keeps the progress and the table."""
    stream = (root / "runner.log").open("a", encoding="utf-8")
    logs.configure(LoggingSettings(format="json"), stream=stream)
    sys.excepthook = sys.__excepthook__  # the runner's own crash still prints on the terminal
    return stream


async def main(only: list[str], seconds: float, aten_poll_ms: int | None = ATEN_POLL_INTERVAL_MS,
               leader_on_cut: bool = False, net_ticktime_s: int = NET_TICKTIME_S, broker: Broker = INSTALLED) -> int:
    problems = missing_requirements() + broker.missing()
    if problems:
        print("make faults cannot run here:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="smsbridge-faults-"))
    print(f"faults: everything under {root}", flush=True)
    runner_log = log_to_file(root)
    started = time.monotonic()
    network = Network()
    run = Run(root, seconds, network, aten_poll_ms, leader_on_cut, net_ticktime_s, broker)
    watcher: asyncio.Task[None] | None = None
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # as Ctrl-C: clean up
    try:
        await run.start()
        print(f"namespaces, cluster, PostgreSQL and bridge up after {time.monotonic() - started:.0f} s", flush=True)
        watcher = asyncio.create_task(run.watch_pbx())
        faults = {"connected-node": run.kill_connected, "leader": run.kill_leader, "follower": run.kill_follower,
                  "partition": run.partition, "roles": run.kill_roles, "pbx-down": run.pbx_down,
                  "postgres": run.postgres_restart}
        for name in SCENARIOS:
            if only and name not in only:
                continue
            await run.scenario(name, faults[name], fault_s=PBX_DOWN_S if name == "pbx-down" else 0.0)
        suspicions = run.false_suspicions()
    finally:
        if watcher is not None:
            watcher.cancel()
        try:
            await asyncio.shield(run.stop())
        finally:
            await asyncio.shield(network.remove())  # whatever is still running in our namespaces too
            runner_log.flush()
    print(f"\nmake faults: {time.monotonic() - started:.0f} s, logs in {root}\n")
    print(table(run.rows))
    poll = f"{aten_poll_ms} ms" if aten_poll_ms is not None else "the broker's default"
    print(f"\nquorum queue followers suspecting a healthy leader outside the faults: {suspicions} "
          f"(aten poll interval {poll}, net_ticktime {net_ticktime_s} s)")
    failed = [name for name, _, row in run.rows
              if any(row[k] != v for k, v in TARGETS.items() if not (k == "dup@PBX" and name in DUPLICATES_ALLOWED))
              or not _p99_ok(row["p99 ms"])]
    if failed:
        print(f"\ntargets missed in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=SCENARIOS, default=[])
    parser.add_argument("--seconds", type=float, default=45.0, help="load per scenario")
    parser.add_argument("--aten-poll-ms", type=int, default=ATEN_POLL_INTERVAL_MS,
                        help="Ra's failure detector poll interval on the nodes (default: %(default)s; "
                             "0: the broker's own, 5000 on RabbitMQ 3.10)")
    parser.add_argument("--leader-on-cut-node", action="store_true",
                        help="partition: move the inbound queue's leader to the node cut off first (the hard case)")
    parser.add_argument("--net-ticktime", type=int, default=NET_TICKTIME_S,
                        help="the nodes' net_ticktime in seconds (default: %(default)s)")
    parser.add_argument("--rabbitmq-home", type=Path, default=Path("/"),
                        help="where the RabbitMQ and Erlang to run were unpacked (default: / , the installed "
                             "ones; faults/README.md, \"Another RabbitMQ\")")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.only, args.seconds, args.aten_poll_ms or None, args.leader_on_cut_node,
                              args.net_ticktime, Broker(args.rabbitmq_home))))
