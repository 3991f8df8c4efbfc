"""deploy/ checked offline: Kubernetes schemas, compose structure, every command a valid CLI.

Docker and a cluster are not available here, so the checks are what can fail without them:
the manifests against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail), the compose files' services, ports, volumes and health checks (and `docker
compose config` where there is one), the systemd units by `systemd-analyze verify`, and every
node command line in any of these files parsed by kevo-repl's own parser (a renamed flag
breaks this test, not a deployment). The relay tier's files are checked for who follows
whom. The Grafana dashboard's queries are checked against what a live primary and replica
serve: a renamed series or label breaks this test, not a dashboard.
"""

from __future__ import annotations

import configparser
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from kevo_repl.cli import build_parser
from tests.cli_support import kevo
from tests.metrics_support import parse, scrape, scrape_text, series_names, started_pair
from tests.nodes import Cluster, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.30.0"


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def parses(argv: list[str]) -> Any:
    """kevo-repl's parser accepts ``argv`` (SystemExit if not)."""
    parser, _ = build_parser()
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("name", "doc"), k8s_docs(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_kubernetes_manifests_validate(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_would_catch_a_mistake() -> None:
    _, doc = next((n, d) for n, d in k8s_docs() if d["kind"] == "StatefulSet")
    bad = copy.deepcopy(doc)
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def of_kind(kind: str, *files: str) -> dict[str, dict[str, Any]]:
    """The ``kind`` objects of those manifests, by name."""
    return {d["metadata"]["name"]: d for n, d in k8s_docs() if d["kind"] == kind and n in files}


def test_kubernetes_topology_and_probes() -> None:
    services = of_kind("Service", "primary.yaml", "replica.yaml")
    sets = of_kind("StatefulSet", "primary.yaml", "replica.yaml")
    assert set(sets) == {"kevo-primary", "kevo-replica"}
    assert sets["kevo-primary"]["spec"]["replicas"] == 1
    assert services["kevo-replica"]["spec"]["clusterIP"] == "None"  # headless
    for name, sts in sets.items():
        assert sts["spec"]["serviceName"] == name and name in services
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        args = [a.replace("$(POD_NAME)", "kevo-replica-0") for a in container["args"]]
        ns = parses(args)
        assert ns.port == 7100 and ns.bind == "0.0.0.0" and ns.metrics_port == 9100
        assert {p["containerPort"] for p in container["ports"]} == {7100, 7101, 9100}
        for probe in ("readinessProbe", "livenessProbe"):
            cmd = container[probe]["exec"]["command"]
            assert cmd[:2] == ["kevo-repl", "status"]
            parses(cmd[1:])
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {ns.data.as_posix()}
    replica = sets["kevo-replica"]["spec"]["template"]["spec"]["containers"][0]
    assert "--ready" in replica["readinessProbe"]["exec"]["command"]
    assert "--primary=kevo-primary-0.kevo-primary:7100" in replica["args"]


def pod_args(container: dict[str, Any], pod: str) -> list[str]:
    """The container's command line (``args``, else ``command``) as pod ``pod`` runs it."""
    argv: list[str] = container["args"] if "args" in container else container["command"]
    return [a.replace("$(POD_NAME)", pod) for a in argv]


def test_kubernetes_failover_group() -> None:
    services = of_kind("Service", "failover.yaml")
    sets = of_kind("StatefulSet", "failover.yaml")
    assert set(sets) == {"kevo-etcd", "kevo-member"}
    etcd_sts, members = sets["kevo-etcd"], sets["kevo-member"]
    assert etcd_sts["spec"]["replicas"] == 1 and members["spec"]["replicas"] == 3
    for sts in sets.values():  # each pod a stable DNS name: $(POD_NAME).<headless service>
        headless = services[sts["spec"]["serviceName"]]["spec"]
        assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"]
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"] == labels == headless["selector"]
    (etcd,) = etcd_sts["spec"]["template"]["spec"]["containers"]
    assert etcd["image"].startswith("quay.io/coreos/etcd:v3.5.")
    flags = dict(a.split("=", 1) for a in pod_args(etcd, "kevo-etcd-0")[1:])
    etcd_url = flags["--advertise-client-urls"]
    assert etcd_url == "http://kevo-etcd-0.kevo-etcd:2379"
    assert flags["--initial-cluster"] == "kevo-etcd-0=" + flags["--initial-advertise-peer-urls"]
    (kevo_c,) = members["spec"]["template"]["spec"]["containers"]
    ids = set()
    for pod in ("kevo-member-0", "kevo-member-1", "kevo-member-2"):
        ns = parses(pod_args(kevo_c, pod))
        assert ns.command == "node" and ns.id == pod and ns.etcd == etcd_url
        assert ns.advertise == f"{pod}.kevo-member:{ns.port}" and ns.bind == "0.0.0.0"
        ids.add(ns.id)
    assert len(ids) == 3
    assert {p["containerPort"] for p in kevo_c["ports"]} == {ns.port, ns.port + 1, 9100}
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = kevo_c[probe]["exec"]["command"]
        assert cmd[:2] == ["kevo-repl", "status"]
        parses(cmd[1:])
    assert "--ready" in kevo_c["readinessProbe"]["exec"]["command"]
    assert {m["mountPath"] for m in kevo_c["volumeMounts"]} == {ns.data.as_posix()}
    clients = services["kevo"]["spec"]  # a ClusterIP Service over every member
    assert "clusterIP" not in clients
    assert clients["selector"] == members["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in clients["ports"]} == {ns.port, ns.port + 1}


def test_kubernetes_relay_tier_follows_primary_then_relay() -> None:
    services = of_kind("Service", "relay-tier.yaml")
    sets = of_kind("StatefulSet", "relay-tier.yaml")
    assert set(sets) == {"kevo-relay", "kevo-leaf"} and set(services) == set(sets)
    upstream = {}
    for name, sts in sets.items():
        headless = services[name]["spec"]
        assert sts["spec"]["serviceName"] == name and headless["clusterIP"] == "None"
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"] == labels == headless["selector"]
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        ns = parses(pod_args(container, f"{name}-0"))
        assert ns.command == "replica" and ns.id == f"{name}-0" and ns.bind == "0.0.0.0"
        assert ns.advertise == f"{name}-0.{name}:{ns.port}"
        assert {p["containerPort"] for p in container["ports"]} == {ns.port, ns.port + 1, 9100}
        assert "--ready" in container["readinessProbe"]["exec"]["command"]
        for probe in ("readinessProbe", "livenessProbe"):
            parses(container[probe]["exec"]["command"][1:])
        upstream[name] = ns.primary
    assert upstream["kevo-relay"] == "kevo-primary-0.kevo-primary:7100"
    assert upstream["kevo-leaf"] == "kevo-relay-0.kevo-relay:7100"  # one relay pod, by name
    assert services["kevo-relay"]["spec"]["publishNotReadyAddresses"]


def test_every_kubernetes_service_selects_one_statefulset() -> None:
    """A copied manifest whose labels were not changed would put its pods behind another
    tier's Service (a leaf answering as a replica): every selector matches one pod template."""
    sets = [d for _, d in k8s_docs() if d["kind"] == "StatefulSet"]
    templates = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in sets}
    for svc in (d for _, d in k8s_docs() if d["kind"] == "Service"):
        selector = svc["spec"]["selector"].items()
        matched = [n for n, labels in templates.items() if selector <= labels.items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {matched}"


def compose_node(name: str, svc: dict[str, Any]) -> tuple[Any, list[str], dict[str, str]]:
    """A compose service running a node: its parsed command, health check and published
    ports (container -> host), after the checks every node service must pass."""
    ns = parses(svc["command"])
    assert ns.bind == "0.0.0.0" and str(ns.data) == "/data"
    assert svc["volumes"] == [f"{name}-data:/data"]
    published = {p.split(":")[1]: p.split(":")[0] for p in svc["ports"]}
    assert {str(ns.port), str(ns.port + 1)} <= published.keys()  # PUB and ROUTER reachable
    health = svc["healthcheck"]["test"]
    assert health[:3] == ["CMD", "kevo-repl", "status"]
    parses(health[2:])
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    return ns, health, published


def test_compose_has_one_primary_and_three_replicas() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"primary", "replica-1", "replica-2", "replica-3"}
    assert set(compose["volumes"]) == {f"{s}-data" for s in services}
    host_ports: set[str] = set()
    for name, svc in services.items():
        ns, _, published = compose_node(name, svc)
        assert ns.command == ("primary" if name == "primary" else "replica")
        assert ns.port == 7100
        host_ports |= set(published.values())
        if name != "primary":
            assert ns.primary == "primary:7100" and ns.id == name
            assert svc["depends_on"]["primary"]["condition"] == "service_healthy"
    assert len(host_ports) == 3 * len(services)  # no two services publish one host port


def test_compose_failover_group_is_etcd_and_three_members() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.failover.yml").read_text())
    services = compose["services"]
    assert set(services) == {"etcd", "n1", "n2", "n3"}
    assert set(compose["volumes"]) == {f"{s}-data" for s in services}
    etcd = services.pop("etcd")
    assert etcd["image"].startswith(("quay.io/coreos/etcd:v3.5.", "gcr.io/etcd-development/etcd"))
    flags = dict(a.split("=", 1) for a in etcd["command"][1:])
    etcd_url = flags["--advertise-client-urls"]
    assert etcd_url == "http://etcd:2379"  # the service's name in the compose network
    assert flags["--listen-client-urls"].endswith(":2379")
    assert etcd["healthcheck"]["test"][0] == "CMD" and "health" in etcd["healthcheck"]["test"]
    host_ports: set[str] = set()
    ids = set()
    for name, svc in services.items():
        ns, health, published = compose_node(name, svc)
        assert ns.command == "node" and ns.id == name and ns.etcd == etcd_url
        assert ns.advertise == f"{name}:{ns.port}" and "--ready" in health
        ids.add(ns.id)
        host_ports |= set(published.values())
        assert svc["depends_on"]["etcd"]["condition"] == "service_healthy"
    assert len(ids) == 3
    assert len(host_ports) == 3 * len(services)  # no two members publish one host port


def test_compose_files_can_run_on_one_host() -> None:
    """No two services publish one host port, in one file or across them."""
    files = DEPLOY.glob("docker-compose*.yml")
    services = [s for f in files for s in yaml.safe_load(f.read_text())["services"].values()]
    ports = [p.split(":")[-2] for svc in services for p in svc.get("ports", [])]
    assert len(ports) == len(set(ports)) and len(services) >= 13


def test_compose_relay_tier_leaves_follow_the_relay() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.relay.yml").read_text())
    services = compose["services"]
    leaves = {"leaf-1", "leaf-2", "leaf-3"}
    assert set(services) == {"primary", "relay", *leaves}
    assert set(compose["volumes"]) == {f"{s}-data" for s in services}
    follows = {}
    for name, svc in services.items():
        ns, health, _ = compose_node(name, svc)
        assert ns.port == 7100 and ns.advertise == f"{name}:7100"
        if name == "primary":
            assert ns.command == "primary"
            continue
        assert ns.command == "replica" and ns.id == name and "--ready" in health
        upstream = ns.primary.split(":")[0]
        assert svc["depends_on"][upstream]["condition"] == "service_healthy"
        follows[name] = upstream
    assert follows == {"relay": "primary", **dict.fromkeys(leaves, "relay")}
    assert all(len(svc["ports"]) == 3 for svc in services.values())  # PUB, ROUTER, metrics


def _compose_cli() -> list[str] | None:
    """``docker compose`` or ``docker-compose`` of Compose 2 or later, whichever answers here
    (1.x predates the Compose Specification and refuses its top-level ``name``)."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is not None:
            cmd = [*argv, "version", "--short"]
            probe = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            major = probe.stdout.strip().lstrip("v").split(".")[0]
            if probe.returncode == 0 and major.isdigit() and int(major) >= 2:
                return argv
    return None


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("docker-compose*.yml")))
def test_compose_config_accepts(name: str) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose 2 (`docker compose` or `docker-compose`) here")
    r = subprocess.run(
        [*cli, "-f", str(DEPLOY / name), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr


def test_dockerfile_runs_the_cli() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["kevo-repl"]' in text
    assert "EXPOSE 7100 7101 9100" in text
    assert "pip install --no-cache-dir ." in text


def unit_settings(unit: str, instance: str) -> tuple[configparser.ConfigParser, dict[str, Any]]:
    """Unit ``unit`` (a template, as ``instance``) and the settings it starts its node with,
    from the example config file it reads (``--print-config``)."""
    ini = configparser.ConfigParser(interpolation=None, strict=True)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read(DEPLOY / "systemd" / unit)
    args = ini["Service"]["ExecStart"].replace("%i", instance).split()[1:]
    config = args.index("--config") + 1
    local = DEPLOY / "config" / Path(args[config]).name
    assert local.exists(), f"{unit} reads {args[config]}; ship an example"
    args[config] = str(local)
    r = kevo(*args, "--print-config")
    assert r.returncode == 0, r.stderr
    return ini, json.loads(r.stdout)


def test_systemd_units_start_nodes_from_valid_config_files() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    instances = {"kevo-member@.service": "n1", "kevo-replica@.service": "replica-1"}
    assert [u.name for u in units] == ["kevo-member@.service", "kevo-primary.service",
                                       "kevo-replica@.service"]  # fmt: skip
    for unit in units:
        ini, settings = unit_settings(unit.name, instances.get(unit.name, ""))
        service = ini["Service"]
        assert service["KillSignal"] == "SIGTERM" and ini["Install"]["WantedBy"]
        assert service["ExecStart"].split()[0] == "/usr/local/bin/kevo-repl"
        assert settings["port"] == 7100 and settings["bind"] == "0.0.0.0"
        assert str(settings["data"]).startswith(service["ReadWritePaths"])


def test_systemd_relay_tier_is_the_replica_unit_twice() -> None:
    _, relay = unit_settings("kevo-replica@.service", "relay-1")
    _, leaf = unit_settings("kevo-replica@.service", "leaf-1")
    _, primary = unit_settings("kevo-primary.service", "")
    assert relay["primary"] == primary["advertise"]  # the relay follows the primary
    assert leaf["primary"] == relay["advertise"]  # the leaf follows the relay
    assert {relay["id"], leaf["id"]} == {"relay-1", "leaf-1"}
    assert relay["data"] != leaf["data"]


def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on every unit (templates as an instance), with ExecStart's
    binary pointed at this checkout's (the unit's path exists on a host, not here)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here")
    binary = Path(sys.executable).with_name("kevo-repl")  # the venv's console script
    paths = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text().replace("/usr/local/bin/kevo-repl", str(binary))
        name = unit.name.replace("@.", "@example.")  # verify loads a template by an instance
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    r = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and str(tmp_path) not in r.stderr, r.stderr  # warnings name it


DASHBOARD = DEPLOY / "grafana" / "kevo-repl.json"
_NAME = re.compile(r"\b(kevo_[a-z0-9_]+)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_PROMETHEUS_LABELS = {"instance", "job", "le"}  # added by the scrape, or a histogram's


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs + [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]


def test_grafana_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36 and dash["title"] and dash["uid"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys()
    used = {n for e in dashboard_queries(dash) for n in _NAME.findall(e)}
    wanted = {  # what an operator looks at first: lag, positions, the write path, traffic
        "kevo_replica_lag_seconds",
        "kevo_replica_lag_entries",
        "kevo_applied_lsn",
        "kevo_durable_lsn",
        "kevo_commit_duration_seconds_bucket",
        "kevo_wal_fsync_duration_seconds_bucket",
        "kevo_commit_group_entries_bucket",
        "kevo_apply_duration_seconds_bucket",
        "kevo_requests_total",
        "kevo_error_responses_total",
        "kevo_bytes_published_total",
    }
    assert wanted <= used, f"no panel shows {wanted - used}"


def test_grafana_dashboard_queries_only_what_nodes_serve(cluster: Cluster) -> None:
    _, pm, _, rm = started_pair(cluster)
    listed = ("kevo_replica_lag_seconds", (("replica", "r1"),))
    wait_for("r1 registered on the primary", lambda: listed in scrape(pm))
    texts = [scrape_text(pm), scrape_text(rm)]
    served = set().union(*(series_names(t) for t in texts))
    labels = {k for t in texts for (_, ls) in parse(t) for k, _ in ls} | _PROMETHEUS_LABELS
    for expr in dashboard_queries(json.loads(DASHBOARD.read_text())):
        names = set(_NAME.findall(expr))
        assert names, f"a query that reads no kevo series: {expr}"
        assert names <= served, f"{expr} reads {names - served}, which no node serves"
        for group in _GROUPING.findall(expr):
            used = {g.strip() for g in group.split(",") if g.strip()}
            assert used <= labels, f"{expr} groups by {used - labels}, which no series has"
