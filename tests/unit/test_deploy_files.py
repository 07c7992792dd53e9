"""The packaging files run commands the CLI really has, parse, and ship valid configurations."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from smsbridge.bridge import ROLES
from smsbridge.broker import names
from smsbridge.cli.main import build_parser
from smsbridge.config_file import check_file

ROOT = Path(__file__).resolve().parents[2]
ENV = {name: "x" * 32 for name in ("FLOWROUTE_ACCESS_KEY", "FLOWROUTE_SECRET_KEY", "SMSBRIDGE_WEBHOOK_TOKEN_MAIN",
                                   "SMSBRIDGE_ADMIN_TOKEN", "LEDGER_PASSWORD")}


def assert_cli_accepts(args: list[str], where: str) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: `smsbridge {' '.join(args)}` is not a valid command ({exc})")


def assert_config_valid(text: str, tmp_path: Path, where: str) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    settings, problems = check_file(path, ENV)
    assert settings is not None and problems == [], f"{where}: {[str(p) for p in problems]}"


def test_compose_file_parses_and_runs_real_commands(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    bridge_services = {name: s for name, s in services.items() if s.get("image") == "smsbridge:latest"}
    for name, service in bridge_services.items():
        assert_cli_accepts(service["command"], f"docker-compose.yml service {name}")
    roles = {s["command"][s["command"].index("--role") + 1] for s in bridge_services.values()
             if "--role" in s["command"]}
    assert roles == set(ROLES), "every role runs as its own service"
    assert "15672:15672" in services["rabbitmq"]["ports"] and "management" in services["rabbitmq"]["image"]
    assert_config_valid((ROOT / "deploy/compose/bridge.toml").read_text(), tmp_path, "deploy/compose/bridge.toml")


def test_kubernetes_manifests_parse_and_are_complete(tmp_path: Path) -> None:
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/smsbridge.yaml").read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == {f"smsbridge-{role}" for role in ROLES}
    budgets = {p["metadata"]["name"] for p in by_kind["PodDisruptionBudget"]}
    assert budgets == set(deployments)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert_cli_accepts(container["args"], f"k8s {name}")
        assert {"readinessProbe", "livenessProbe", "resources"} <= container.keys(), name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (job,) = by_kind["Job"]
    assert_cli_accepts(job["spec"]["template"]["spec"]["containers"][0]["args"], "k8s migration job")
    (config_map,) = by_kind["ConfigMap"]
    assert_config_valid(config_map["data"]["bridge.toml"], tmp_path, "k8s ConfigMap")
    (secret,) = by_kind["Secret"]
    assert set(secret["stringData"]) == set(ENV)


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)) == ["smsbridge"]  # type: ignore[union-attr]
    assert_cli_accepts(json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1)), "Dockerfile CMD")  # type: ignore[union-attr]
    assert re.search(r"^USER smsbridge$", text, re.M) and "slim" in text


@pytest.mark.parametrize("unit", ["smsbridge@.service", "smsbridge-all.service"])
def test_systemd_units_run_real_commands(unit: str) -> None:
    text = (ROOT / "deploy/systemd" / unit).read_text()
    lines = re.findall(r"^ExecStart(?:Pre)?=(\S+) (.+)$", text, re.M)
    assert lines
    for binary, rest in lines:
        assert binary.endswith("/smsbridge")
        for role in ROLES if "%i" in rest else ["-"]:
            assert_cli_accepts(shlex.split(rest.replace("%i", role)), f"{unit} ({role})")


def test_rabbitmq_definitions_pin_pbx_users_to_their_tenant() -> None:
    definitions = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    topic = {(t["user"], t["exchange"]): t for t in definitions["topic_permissions"]}
    requests = topic[("pbx-acme", names.requests_exchange("smsbridge"))]
    assert re.fullmatch(requests["write"], names.request_routing_key("acme"))
    assert not re.fullmatch(requests["write"], names.request_routing_key("beta"))
    assert ("pbx-acme", names.status_exchange("smsbridge")) in topic


POLL_500MS = "raft.adaptive_failure_detector.poll_interval = 500"  # Ra's failure detector, RabbitMQ 3.13 images


def test_kubernetes_rabbitmq_is_a_three_node_cluster_the_bridge_lists_in_full() -> None:
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/rabbitmq.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    stateful_set, config = by_kind["StatefulSet"], by_kind["ConfigMap"]["data"]
    assert stateful_set["spec"]["replicas"] == 3 and stateful_set["spec"]["serviceName"] == "rabbitmq"
    nodes = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d = rabbit@(\S+)$", config["rabbitmq.conf"], re.M)
    assert nodes == [f"rabbitmq-{i}.rabbitmq" for i in range(3)]
    assert "cluster_partition_handling = pause_minority" in config["rabbitmq.conf"]
    assert POLL_500MS in config["rabbitmq.conf"].splitlines()  # docs/operations.md, "Several hosts"
    assert json.loads(config["definitions.json"]) == json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    bridge = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/smsbridge.yaml").read_text()) if d]
    (config_map,) = [d for d in bridge if d["kind"] == "ConfigMap"]
    assert [f"{n}:5672" for n in nodes] == re.findall(r"@([\w.-]+:5672)/", config_map["data"]["bridge.toml"])


def test_compose_rabbitmq_is_a_three_node_cluster_that_pauses_a_minority() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    conf = (ROOT / "deploy/rabbitmq/cluster.conf").read_text()
    nodes = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d = rabbit@(\S+)$", conf, re.M)
    assert sorted(nodes) == sorted(s["hostname"] for s in services.values() if "rabbitmq" in s.get("image", ""))
    assert len(nodes) == 3 and "cluster_partition_handling = pause_minority" in conf
    assert POLL_500MS in conf.splitlines()
