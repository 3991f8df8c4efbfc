"""Errors that say what happened: every cause of a silent node gets its own message.

Each case runs the CLI as a user would, against a real node process (or a real port that
is not one), and checks the cause is named, not "no answer (is it running?)".
"""

from __future__ import annotations

import json
from pathlib import Path

from kevo_repl.testing.ports import free_port, free_port_pair
from tests.cli_support import kevo
from tests.faults.checkers import count_events
from tests.nodes import Cluster, wait_for
from tests.test_security import _start_secure, keys  # noqa: F401  (keys: a fixture)


def _get(node: str, *extra: str) -> tuple[int, str]:
    out = kevo("get", "--node", node, "--request-timeout-ms", "1500", "k", *extra)
    return out.returncode, out.stderr


def test_an_unresolvable_host_is_named_at_once() -> None:
    code, err = _get("no-such-host.invalid:7100")
    assert code == 3 and "cannot resolve host 'no-such-host.invalid'" in err, err


def test_a_port_nobody_listens_on_is_a_refused_connection() -> None:
    port = free_port()  # nothing listens on it
    code, err = _get(f"127.0.0.1:{port - 1}")
    assert code == 3 and "connection refused by tcp://127.0.0.1:" in err, err
    assert "the --port it was started with" in err


def test_the_metrics_port_is_named_as_not_zeromq(cluster: Cluster) -> None:
    metrics = free_port()
    primary = cluster.primary("primary", "--metrics-port", str(metrics))
    code, err = _get(f"127.0.0.1:{metrics - 1}")  # requests then go to the metrics port
    assert code == 3 and "does not speak ZeroMQ" in err and "--metrics-port" in err, err
    assert primary.proc is not None and primary.proc.poll() is None


def test_curve_refusals_are_told_apart(cluster: Cluster, keys: Path) -> None:  # noqa: F811
    primary = _start_secure(cluster, keys, "primary", "primary")
    code, err = _get(primary.address)  # no keys at all
    assert code == 3 and "requires CURVE" in err, err
    code, err = _get(primary.address, "--keys", str(keys), "--key-name", "intruder")
    assert code == 3 and "refused our CURVE key" in err and "authorized_keys" in err, err
    intruder = (keys / "intruder.key").read_text().split('"')[1]

    def logged() -> dict[str, object] | None:  # the node names who it refused, and why
        for line in primary.log_path.read_text().splitlines():
            doc = json.loads(line) if line.startswith("{") else {}
            if doc.get("event") == "handshake_refused":
                return doc
        return None

    doc = wait_for("the refusal logged", logged, 10)
    assert doc["peer"] == "127.0.0.1" and doc["key"] == intruder, doc
    assert doc["reason"] == "key not in authorized_keys"
    wrong = keys / "r1.key"  # a real public key, not the primary's
    code, err = _get(
        primary.address, "--keys", str(keys), "--key-name", "app", "--server-key", str(wrong)
    )
    assert code == 3 and "server key we were given is not this node's" in err, err
    code, err = _get(primary.address, "--keys", str(keys), "--key-name", "app")
    assert code == 1 and "key 'k' not found" in err, err  # the right keys: k is just absent


def test_put_refuses_a_wait_for_more_replicas_than_known(cluster: Cluster) -> None:
    primary = cluster.primary()
    cluster.replica("r1", primary)
    out = kevo("put", "--node", primary.address, "k", "v", "--wait-replicas", "2")
    assert out.returncode == 1 and "knows 1 replica (r1)" in out.stderr, out.stderr
    assert "--wait-anyway" in out.stderr and out.stdout == ""  # nothing written
    out = kevo(
        "put", "--node", primary.address, "k", "v", "--wait-replicas", "2", "--wait-anyway",
        "--timeout-ms", "200",
    )  # fmt: skip
    assert out.returncode == 1 and "replicas applied: 1 of 2 requested (timed out)" in out.stderr
    out = kevo("put", "--node", primary.address, "k2", "v", "--wait-replicas", "1")
    assert out.returncode == 0 and "replicas applied: 1 of 1" in out.stderr, out.stderr


def test_put_takes_big_values_from_a_file_or_stdin_and_refuses_too_big_ones(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary = cluster.primary()
    big = tmp_path / "big"
    big.write_bytes(b"\x00\xffbinary" * 100_000)  # 900 kB: far past what argv may carry
    assert kevo("put", "--node", primary.address, "big", "--value-file", str(big)).returncode == 0
    out = kevo("put", "--node", primary.address, "piped", "--value-file", "-", input=b"from-stdin")
    assert out.returncode == 0, out.stderr
    with primary.client() as c:
        assert c.get(b"big") == big.read_bytes() and c.get(b"piped") == b"from-stdin"
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (4 * 1024 * 1024 + 1))
    out = kevo("put", "--node", primary.address, "huge", "--value-file", str(huge))
    assert out.returncode == 1 and "over the node's limit of 4194304 bytes" in out.stderr
    out = kevo("put", "--node", primary.address, "k", "v", "--value-file", str(big))
    assert out.returncode == 2 and "exactly one of them" in out.stderr
    assert "up to 4194304 bytes" in kevo("put", "--help").stdout


def test_a_replica_says_once_that_its_upstream_is_unreachable(cluster: Cluster) -> None:
    port = free_port_pair()
    replica = cluster.replica("r1", f"127.0.0.1:{port}", "--log-level", "debug")

    def problem() -> str:
        out = kevo("status", "--node", replica.address, "--json")
        return str(json.loads(out.stdout)["upstream_problem"])

    wait_for(
        "status names the cause", lambda: problem() == "upstream unreachable: connection refused"
    )
    out = kevo("status", "--node", replica.address, "--ready")
    assert out.returncode == 1 and "upstream unreachable: connection refused" in out.stdout
    assert "not ready: upstream unreachable: connection refused" in out.stderr, out.stderr
    wait_for("two retries", lambda: count_events(replica.log_path, "upstream_retry") >= 2, 30)
    assert count_events(replica.log_path, "upstream_unreachable") == 1  # once, not per retry
    assert count_events(replica.log_path, "disconnected") == 0
    cluster.primary("primary", port=port)  # the upstream appears: said once, too
    wait_for(
        "ready", lambda: kevo("status", "--node", replica.address, "--ready").returncode == 0, 30
    )
    assert count_events(replica.log_path, "upstream_reachable") == 1 and problem() == ""
