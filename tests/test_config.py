"""``--config FILE``: TOML for every flag of primary/replica/cluster; flags win; typos refused."""

from __future__ import annotations

import json
from pathlib import Path

from kevo_repl.testing.ports import free_port, free_port_pair
from tests.cli_support import kevo
from tests.nodes import Cluster, Node


def settings(*argv: str) -> dict[str, object]:
    r = kevo(*argv, "--print-config")
    assert r.returncode == 0, r.stderr
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def test_file_sets_flags_and_command_line_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "kevo.toml"
    cfg.write_text(
        'data = "/srv/kevo"\nport = 7200\nfsync = "none"\nretention_bytes = 1000000\n'
        "metrics-port = 9100\n"
        '[primary]\nbind = "0.0.0.0"\nlog-level = "warning"\n'
        '[replica]\nprimary = "db1:7200"\nno-bootstrap = true\n'
    )
    p = settings("primary", "--config", str(cfg), "--port", "7300")
    assert p["port"] == 7300  # the flag wins over the file
    assert p["data"] == "/srv/kevo" and p["fsync"] == "none"
    assert p["retention-bytes"] == 1_000_000 and p["metrics-port"] == 9100
    assert p["bind"] == "0.0.0.0" and p["log-level"] == "warning"
    rcfg = tmp_path / "replica.toml"
    rcfg.write_text('data = "/srv/r"\n[replica]\nprimary = "db1:7200"\nno-bootstrap = true\n')
    r = settings("replica", "--config", str(rcfg))
    assert r["primary"] == "db1:7200" and r["no-bootstrap"] is True and r["port"] == 7110
    c = settings("cluster", "--config", str(rcfg), "--replicas", "3")
    assert c["data"] == "/srv/r" and c["replicas"] == 3


def test_bad_config_files_exit_2_with_the_reason(tmp_path: Path) -> None:
    cases = {
        'data = "d"\nprot = 7100\n': "unknown key 'prot' (top level) for `kevo-repl primary`",
        'data = "d"\n[replica]\nprimry = "h:1"\n': "unknown key 'primry' ([replica])",
        'data = "d"\n[server]\nport = 1\n': "unknown table [server]",
        'data = "d"\nport = "7100"\n': "key 'port' (top level): expected an integer",
        'data = "d"\nport = 70000\n': "must be a port below 65535",
        'data = "d"\nfsync = "sometimes"\n': "'sometimes' is not one of always, interval, none",
        'data = "d"\nfsync = true\n': "expected a string, got True",
        "data = [\n": "is not valid TOML",
    }
    for text, needle in cases.items():
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        r = kevo("primary", "--config", str(cfg), "--print-config")
        assert r.returncode == 2, (text, r.stdout)
        assert "usage: kevo-repl primary" in r.stderr
        assert needle in r.stderr, (text, r.stderr)
    missing = kevo("primary", "--config", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "cannot read config file" in missing.stderr


def test_a_node_runs_from_a_config_file(cluster: Cluster, tmp_path: Path) -> None:
    filed, flagged = free_port_pair(), free_port_pair()
    metrics = free_port()
    cfg = tmp_path / "primary.toml"
    cfg.write_text(
        f'data = "{tmp_path / "p"}"\nport = {filed}\nfsync = "none"\nid = "from-file"\n'
        f"metrics-port = {metrics}\n"
    )
    argv = [*cluster._cmd("primary", "--config", str(cfg), "--port", str(flagged))]
    node = Node("primary", flagged, argv, tmp_path / "primary.log").start()
    cluster.nodes.append(node)
    node.wait_serving()  # on the flag's port, not the file's
    status = json.loads(kevo("status", "--node", node.address, "--json").stdout)
    assert status["node_id"] == "from-file"
    started = next(
        json.loads(line)
        for line in node.log_path.read_text().splitlines()
        if '"event": "started"' in line
    )
    assert started["fsync"] == "none" and started["pub"] == f"127.0.0.1:{flagged}"
