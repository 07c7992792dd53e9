"""The real RabbitMQ permissions of deploy/rabbitmq/definitions.json, in a vhost of the test's own.

The machine's broker is shared with other test runs: the file's users are renamed with a unique
tag (users are global in RabbitMQ), its vhost becomes the tag, and nothing outside that vhost
and those users is touched. Loaded with `rabbitmqctl import_definitions`, removed with
`delete_vhost` and `delete_user`. A second PBX user (beta) gets pbx-acme's entries with the
tenant replaced, as the README tells an operator to do for each PBX.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
FILE_VHOST = "smsbridge"


@dataclass(frozen=True)
class Vhost:
    name: str
    users: dict[str, str]  # the file's user name → the unique name in the broker
    passwords: dict[str, str]
    host: str
    port: int

    def url(self, file_user: str) -> str:
        user = self.users[file_user]
        return (f"amqp://{quote(user, safe='')}:{quote(self.passwords[file_user], safe='')}"
                f"@{self.host}:{self.port}/{quote(self.name, safe='')}")


def _with_beta(definitions: dict[str, Any]) -> dict[str, Any]:
    """pbx-acme's user and permissions copied for tenant beta (the file is the template per PBX)."""
    doc = json.loads(json.dumps(definitions))
    for key in ("users", "permissions", "topic_permissions"):
        clones = [json.loads(json.dumps(entry).replace("acme", "beta"))
                  for entry in doc[key] if "pbx-acme" in (entry.get("user"), entry.get("name"))]
        doc[key] += clones
    return doc


def rewrite(definitions: dict[str, Any], tag: str) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The definitions for vhost `tag`, users renamed `tag.<name>`; the permissions' patterns as in the file."""
    doc = _with_beta(definitions)
    users = {user["name"]: f"{tag}.{user['name']}" for user in doc["users"]}
    passwords = {user["name"]: user["password"] for user in doc["users"]}
    out: dict[str, Any] = {key: [] for key in ("queues", "exchanges", "bindings", "parameters")}
    out["vhosts"] = [{"name": tag}]
    out["users"] = [{**user, "name": users[user["name"]]} for user in doc["users"]]
    for key in ("permissions", "topic_permissions"):
        out[key] = [{**entry, "user": users[entry["user"]], "vhost": tag}
                    for entry in doc[key] if entry["vhost"] == FILE_VHOST]
    out["policies"] = [{**policy, "vhost": tag} for policy in doc.get("policies", []) if policy["vhost"] == FILE_VHOST]
    return out, users, passwords


def _ctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()[:500]}")
    return done.stdout


def _wait_imported(vhost: str, topic_permissions: int, deadline_s: float = 60.0) -> None:
    """import_definitions returns before the import is done: wait for the topic permissions."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            rows = _ctl("list_topic_permissions", "-p", vhost, "-q", "--no-table-headers").strip().splitlines()
        except RuntimeError:
            rows = []
        if len(rows) >= topic_permissions:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the definitions for vhost {vhost} were not imported within {deadline_s:g} s")


@contextmanager
def isolated_vhost(amqp_url: str) -> Iterator[Vhost]:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to load deploy/rabbitmq/definitions.json into a test vhost",
                    pytrace=False)
    tag = f"sbtest-iso-{uuid.uuid4().hex[:10]}"
    doc, users, passwords = rewrite(json.loads(DEFINITIONS.read_text()), tag)
    parts = urlsplit(amqp_url)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(doc, file)
    Path(file.name).chmod(0o644)  # the broker's own process reads it (it holds passwords of test users only)
    try:
        _ctl("import_definitions", file.name)
        _wait_imported(tag, len(doc["topic_permissions"]))
        yield Vhost(tag, users, passwords, parts.hostname or "127.0.0.1", parts.port or 5672)
    finally:
        Path(file.name).unlink(missing_ok=True)
        for step in (("delete_vhost", tag), *(("delete_user", user) for user in users.values())):
            try:
                _ctl(*step)
            except RuntimeError:
                pass  # already gone (or never made): nothing of anyone else's is touched either way
