"""`make faults --rabbitmq-home DIR`: the nodes run a RabbitMQ (and its Erlang) unpacked into DIR
instead of the installed one, with every script and program taken from there (the run itself is
`make faults`, not part of the suite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faults.cluster import Broker, Cluster
from faults.netns import plan


def _unpacked(home: Path) -> Path:
    """The two scripts the suite runs, where `dpkg -x` of Debian's rabbitmq-server puts them."""
    bin_dir = home / "usr/lib/rabbitmq/bin"
    bin_dir.mkdir(parents=True)
    for name in ("rabbitmq-server", "rabbitmqctl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
    return home


def test_by_default_the_installed_broker_runs_with_the_callers_path() -> None:
    broker = Broker()
    assert broker.server == "/usr/lib/rabbitmq/bin/rabbitmq-server"  # not the sbin wrapper: it changes user
    assert broker.ctl == "/usr/lib/rabbitmq/bin/rabbitmqctl"
    assert broker.path("/usr/local/bin:/usr/bin") == "/usr/local/bin:/usr/bin"


def test_an_unpacked_broker_runs_its_own_scripts_and_finds_its_own_erlang_first(tmp_path: Path) -> None:
    home = _unpacked(tmp_path / "rmq-4.0")
    broker = Broker(home)
    assert broker.missing() == []
    assert broker.server == f"{home}/usr/lib/rabbitmq/bin/rabbitmq-server"
    assert broker.ctl == f"{home}/usr/lib/rabbitmq/bin/rabbitmqctl"
    assert broker.path("/usr/bin:/bin") == f"{home}/usr/bin:/usr/bin:/bin"  # its `erl` and `escript`


def test_every_node_of_the_cluster_gets_the_unpacked_brokers_path(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("ERL_LIBS", "/somewhere/else")  # the caller's Erlang settings stay out
    home = _unpacked(tmp_path / "rmq")
    cluster = Cluster(tmp_path / "run", list(plan(["rmq1", "rmq2"]).values()), broker=Broker(home))
    envs = [cluster.env(node) for node in cluster.nodes]
    assert [env["PATH"] for env in envs] == [f"{home}/usr/bin:/usr/bin:/bin"] * 2
    assert all("ERL_LIBS" not in env for env in envs)


@pytest.mark.parametrize("home", ["relative/dir", "/opt/a:b", "/opt/a:/usr/local"])
def test_a_home_that_path_cannot_hold_is_refused_before_anything_starts(home: str) -> None:
    (problem,) = Broker(Path(home)).missing()
    assert "absolute directory without ':'" in problem


def test_a_home_without_the_scripts_names_each_missing_one(tmp_path: Path) -> None:
    problems = Broker(tmp_path).missing()
    assert [p.split(" not found")[0] for p in problems] == [
        f"{tmp_path}/usr/lib/rabbitmq/bin/rabbitmq-server", f"{tmp_path}/usr/lib/rabbitmq/bin/rabbitmqctl"]
