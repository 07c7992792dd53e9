"""A PostgreSQL cluster of our own (`pg_ctl`, own port and data directory), for the ledger.

initdb refuses to run as root: when we are root, every command runs as the `postgres` user
(`runuser`), and the data directory is theirs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


class Postgres:
    def __init__(self, root: Path, *, port: int = 27432) -> None:
        self.data = root / "pgdata"
        self.log = root / "postgres.log"
        self.port = port
        self.user = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/postgres"

    async def _run(self, *args: str, timeout: float = 120) -> str:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
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
        await self.pg_ctl("start", "-w", "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1")

    async def pg_ctl(self, *args: str) -> None:
        await self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args)

    async def psql(self, sql: str) -> str:
        return await self._run(str(BIN.parent / "bin" / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                               self.user, "-d", "postgres", "-c", sql)

    async def restart(self) -> None:
        """An immediate stop (as a crash: no checkpoint), then start."""
        await self.pg_ctl("stop", "-m", "immediate", "-w")
        await self.pg_ctl("start", "-w", "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1")

    async def stop(self) -> None:
        try:
            await self.pg_ctl("stop", "-m", "fast", "-w")
        except RuntimeError:
            pass
