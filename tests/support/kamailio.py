"""A real Kamailio (Debian's `kamailio` package) as registrar and MESSAGE proxy, on loopback.

The configuration is written into the test's own directory (ports, users, whether an offline
phone's texts are stored by msilo or refused with 480); the process is started without
daemonising and stopped by its PID. A missing Kamailio fails the test, never skips it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOMAIN = "sms.test"
MODULE_DIRS = ["/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules",
               "/usr/lib/kamailio/modules"]
MODULES = ["kex", "corex", "tm", "tmx", "sl", "pv", "maxfwd", "usrloc", "registrar", "textops", "siputils",
           "xlog", "sanity", "auth", "htable", "db_text", "msilo"]
# db_text tables for msilo; Debian's own `silo` marks callid and status NOT NULL, which makes
# m_store() fail ("null value not allowed"), so they are nullable here.
SILO = ("id(int,auto) src_addr(string) dst_addr(string) username(string) domain(string) inc_time(int) "
        "exp_time(int) snd_time(int) ctype(string) body(string,null) extra_hdrs(string,null) callid(string,null) "
        "status(int,null) \n")
VERSION = "id(int,auto) table_name(string) table_version(int) \n0:silo:8\n"


@dataclass
class Kamailio:
    directory: Path
    port: int
    users: dict[str, str]
    store_offline: bool = True
    intake_port: int = 9
    udp_mtu: int = 1300
    # Shared memory (MB). Every relayed MESSAGE leaves its transaction in shared memory for tm's
    # wt_timer (5 s) after the final answer; 32 MB held about 2,000 of them, so a sender doing
    # 2,000 texts/s ran Kamailio out of memory and its requests were dropped unanswered ("out of
    # mem" in the log) until the timer freed some: a UDP sender saw only retransmission waits.
    shm_mb: int = 128
    # tm's wt_timer (ms): how long a completed transaction stays to absorb late retransmissions.
    wait_ms: int = 5000
    # Kamailio's nonce_count with qop=auth: a nonce may be reused, each time with a higher nc.
    nonce_count: bool = False
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.directory / "kamailio.log"

    def config(self) -> str:
        module_dir = next((d for d in MODULE_DIRS if Path(d).is_dir()), MODULE_DIRS[0])
        users = "\n".join(f'    $sht(users=>{user}) = "{password}";' for user, password in self.users.items())
        loads = "\n".join(f'loadmodule "{name}.so"' for name in MODULES)
        offline = ('if (m_store("$avp(orig_ruri)")) { t_reply("202", "Accepted (stored)"); }\n'
                   '        else { t_reply("480", "Temporarily Unavailable"); }' if self.store_offline
                   else 't_reply("480", "Temporarily Unavailable");')
        failure = ('if (t_check_status("408|480|503")) { if (m_store("$avp(orig_ruri)")) '
                   '{ t_reply("202", "Accepted (stored)"); } }' if self.store_offline else "")
        auth_params = ('modparam("auth", "nonce_count", 1)' if self.nonce_count else "")
        return CONFIG.format(auth_params=auth_params, qop="1" if self.nonce_count else "0", port=self.port,
                             mtu=self.udp_mtu, mpath=module_dir, loads=loads,
                             db=self.directory / "db", users=users, offline=offline,
                             intake=self.intake_port, domain=DOMAIN, failure=failure, wait_ms=self.wait_ms)

    async def start(self) -> None:
        binary = shutil.which("kamailio") or next(
            (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.path.exists(p)), None)
        if binary is None:
            pytest.fail("kamailio is not installed: apt-get install -y kamailio (.ci/run does). "
                        "SIP tests never skip.", pytrace=False)
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        (self.directory / "db" / "silo").write_text(SILO)
        (self.directory / "db" / "version").write_text(VERSION)
        cfg = self.directory / "kamailio.cfg"
        cfg.write_text(self.config())
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                binary, "-f", str(cfg), "-P", str(self.directory / "kamailio.pid"), "-DD", "-E", "-m", str(self.shm_mb),
                "-M", "8", "-w", str(self.directory), stdout=out, stderr=out, start_new_session=True)
        await self._wait_ready()

    async def _wait_ready(self, timeout: float = 90.0) -> None:
        """Until Kamailio answers an OPTIONS over UDP (with 405) and accepts a TCP connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                pytest.fail(f"kamailio exited with {self.process.returncode}:\n{self.log.read_text()}")
            if await asyncio.to_thread(self._answers):
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"kamailio never answered on {self.port}:\n{self.log.read_text()}")

    def _answers(self) -> bool:
        probe = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe;rport\r\n"
                 f"Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:{DOMAIN}>\r\n"
                 "Call-ID: probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(0.5)
                udp.connect(("127.0.0.1", self.port))
                udp.send(probe)
                udp.recv(4096)
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # Kamailio's main process stops its children
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group of the process we started, by its id
            await self.process.wait()


CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
udp_mtu={mtu}
udp_mtu_try_proto=TCP
alias="{domain}"
tcp_max_connections=64
mpath="{mpath}"

{loads}

modparam("usrloc", "db_mode", 0)
modparam("registrar", "default_expires", 300)
modparam("htable", "htable", "users=>size=4;")
modparam("msilo", "db_url", "text://{db}")
modparam("msilo", "from_address", "sip:registrar@{domain}")
modparam("msilo", "add_date", 0)
modparam("msilo", "outbound_proxy", "sip:127.0.0.1:{port}")
modparam("tm", "fr_timer", 4000)
modparam("tm", "wt_timer", {wait_ms})
{auth_params}

event_route[htable:mod-init] {{
{users}
}}

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!sanity_check("17895", "7")) {{ exit; }}
    # a retransmission of a request being handled or answered: its transaction answers it
    if (t_precheck_trans()) {{ t_check_trans(); exit; }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("{domain}", "$sht(users=>$au)", "0")) {{ www_challenge("{domain}", "0"); exit; }}
        if (!save("location")) {{ sl_reply_error(); exit; }}
        m_dump();
        exit;
    }}
    if (!is_method("MESSAGE")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    if (!($si == "127.0.0.1" && $sp == {port})) {{
        if (!pv_proxy_authenticate("{domain}", "$sht(users=>$au)", "0")) {{
            proxy_challenge("{domain}", "{qop}");
            exit;
        }}
        consume_credentials();
    }}
    if ($au != "bridge" && $rU =~ "^\\+?[0-9]{{10,15}}(\\+[0-9]{{10,15}})?$") {{
        $du = "sip:127.0.0.1:{intake}";
        t_relay();
        exit;
    }}
    $avp(orig_ruri) = $ru;
    if (!lookup("location")) {{
        t_newtran();
        {offline}
        exit;
    }}
    t_on_failure("STORE");
    t_relay();
}}

failure_route[STORE] {{
    if (t_is_canceled()) exit;
    {failure}
}}
"""
