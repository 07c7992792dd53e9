"""SIPp (Debian's `sip-tester`) as an independent phone: run a scenario, fail the test if it fails."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.support.ports import free_port

SCENARIOS = Path(__file__).resolve().parent.parent / "fixtures" / "sipp"


def expecting(status: int, workdir: Path) -> Path:
    """answer.xml with the status its one answer must have."""
    path = workdir / f"answer-{status}.xml"
    path.write_text((SCENARIOS / "answer.xml").read_text().replace("EXPECTED", str(status)))
    return path


async def run_sipp(scenario: str | Path, port: int, *, service: str, keys: dict[str, str], workdir: Path,
                   call_id: str, local_port: int | None = None, transport: str = "u1",
                   local_ip: str = "127.0.0.1", timeout: float = 60.0) -> tuple[int, str]:
    """Run one call of `scenario` (a name in fixtures/sipp, or a path) against 127.0.0.1:`port`
    from `local_ip`; (exit code, its output and error log). The same `call_id`, `local_port` and
    `keys` give the same request bytes (a retransmission)."""
    binary = shutil.which("sipp")
    if binary is None:
        pytest.fail("sipp is not installed: apt-get install -y sip-tester (.ci/run does). SIP tests never skip.",
                    pytrace=False)
    key_args = [arg for name, value in keys.items() for arg in ("-key", name, value)]
    process = await asyncio.create_subprocess_exec(
        binary, f"127.0.0.1:{port}", "-sf", str(SCENARIOS / scenario), "-m", "1", "-i", local_ip,
        "-p", str(local_port or free_port()), "-cid_str", call_id,
        "-s", service, "-t", transport, "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-trace_err", *key_args, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout + 30)
    except TimeoutError:
        process.kill()  # the process we started, by its handle
        output, _ = await process.communicate()
    errors = "".join(p.read_text(errors="replace") for p in workdir.glob("*_errors.log"))
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")[-3000:] + errors
