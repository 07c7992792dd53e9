"""The pure parts of `make faults`' simulated hosts: addresses, partition rules, and when a
cluster counts as whole again (the run itself is `make faults`, not part of the suite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faults.cluster import cluster_problem
from faults.netns import PARTITION_TABLE, missing_requirements, partition_rules, plan

NODES = ["sbf1@10.231.0.11", "sbf2@10.231.0.12", "sbf3@10.231.0.13"]


def test_plan_gives_each_host_the_next_address_and_its_own_namespace_and_veth() -> None:
    hosts = plan(["rmq1", "receiver-1"], first=11)
    assert [(h.netns, h.address) for h in hosts.values()] == [("sbf-rmq1", "10.231.0.11"),
                                                              ("sbf-receiver-1", "10.231.0.12")]
    assert all(len(h.veth) <= 15 for h in hosts.values())  # the kernel's limit on interface names
    assert hosts["rmq1"].command("epmd") == ["ip", "netns", "exec", "sbf-rmq1", "epmd"]


@pytest.mark.parametrize(("names", "first"), [(["a", "a"], 11), (["a"], 255), (["a"], 1)])
def test_plan_refuses_duplicate_names_and_addresses_outside_the_subnet(names: list[str], first: int) -> None:
    with pytest.raises(ValueError):
        plan(names, first=first)


def test_partition_rules_drop_both_directions_to_every_peer_and_nothing_else() -> None:
    rules = partition_rules(["10.231.0.12", "10.231.0.13"])
    assert rules.startswith(f"table inet {PARTITION_TABLE} {{")
    assert "hook input" in rules and "ip saddr { 10.231.0.12, 10.231.0.13 } drop" in rules
    assert "hook output" in rules and "ip daddr { 10.231.0.12, 10.231.0.13 } drop" in rules
    assert rules.count("policy accept") == 2  # clients and everyone else still get through


def test_a_partition_needs_a_peer() -> None:
    with pytest.raises(ValueError):
        partition_rules([])


def test_missing_tools_name_the_debian_package_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    problems = "\n".join(missing_requirements())
    assert "install the Debian package iproute2" in problems and "install the Debian package nftables" in problems


def _queue(name: str, members: list[str], online: list[str]) -> dict[str, object]:
    return {"name": name, "members": members, "online": online}


def test_a_cluster_with_every_node_running_and_every_queue_on_three_nodes_is_whole() -> None:
    status = {"running_nodes": NODES, "partitions": {}}
    assert cluster_problem(status, [_queue("p.inbound", NODES, NODES)], 3) is None


@pytest.mark.parametrize(("status", "queues", "says"), [
    ({"running_nodes": NODES[:2], "partitions": {}}, [], "2 of 3 nodes running"),
    ({"running_nodes": NODES, "partitions": {NODES[0]: [NODES[1]]}}, [], "partitions reported"),
    ({"running_nodes": NODES, "partitions": {}}, [_queue("p.inbound", NODES[:2], NODES[:2])], "p.inbound"),
    ({"running_nodes": NODES, "partitions": {}}, [_queue("p.delivery", NODES, NODES[1:])], "p.delivery"),
])
def test_what_keeps_a_cluster_from_being_whole_is_named(status: dict[str, object], queues: list[dict[str, object]],
                                                       says: str) -> None:
    problem = cluster_problem(status, queues, 3)
    assert problem is not None and says in problem
