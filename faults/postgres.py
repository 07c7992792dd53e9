"""A PostgreSQL cluster of our own (`pg_ctl`, own port and data directory), for the ledger,
on a simulated host of its own: it runs in the host's network namespace, listens on the host's
address only and lets in the hosts' subnet (pg_hba), as a database server on another machine.

initdb refuses to run as root: when we are root, every command runs as the `postgres` user
(`runuser`), and the data directory is theirs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from faults.netns import SUBNET, Host

BIN = Path("/usr/lib/postgresql/15/bin")


class Postgres:
    def __init__(self, root: Path, host: Host, *, port: int = 5432) -> None:
        self.data = root / "pgdata"
        self.log = root / "postgres.log"
        self.sockets = root / "pgsockets"  # not /tmp or /run/postgresql: those are the machine's
        self.host = host
        self.port = port
        self.user = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host.address}:{self.port}/postgres"

    @property
    def _options(self) -> str:
        return f"-p {self.port} -k {self.sockets} -c listen_addresses={self.host.address}"

    async def _run(self, *args: str, timeout: float = 120) -> str:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        command = self.host.command(*command)
        proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, cwd="/tmp")
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {out.decode(errors='replace')[-800:]}")
        return out.decode(errors="replace")

    async def start(self) -> None:
        if not self.data.exists():
            self.data.mkdir(parents=True)
            self.log.touch()
            if os.geteuid() == 0:
                shutil.chown(self.data, "postgres", "postgres")
                shutil.chown(self.log, "postgres", "postgres")
                shutil.chown(self.data.parent, "postgres", "postgres")
            await self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user)
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {SUBNET}.0/24 trust\n")  # the simulated hosts
            self.sockets.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.sockets, "postgres", "postgres")
        await self.pg_ctl("start", "-w", "-o", self._options)

    async def pg_ctl(self, *args: str) -> None:
        await self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args)

    async def psql(self, sql: str) -> str:
        return await self._run(str(BIN / "psql"), "-h", self.host.address, "-p", str(self.port), "-U",
                               self.user, "-d", "postgres", "-c", sql)

    async def restart(self) -> None:
        """An immediate stop (as a crash: no checkpoint), then start."""
        await self.pg_ctl("stop", "-m", "immediate", "-w")
        await self.pg_ctl("start", "-w", "-o", self._options)

    async def stop(self) -> None:
        try:
            await self.pg_ctl("stop", "-m", "fast", "-w")
        except RuntimeError:
            pass
