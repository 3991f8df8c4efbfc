"""The one-shot commands as a user runs them: put, delete, get, load, status, digest.

One primary and one replica serve the whole module (starting nodes is the slow part); each
test uses its own keys. Exit codes and messages are the CLI contract of issue 4.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kevo_repl.testing.ports import free_port
from tests.cli_support import Spawned, kevo
from tests.nodes import Cluster, Node, converged, wait_for


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    root = tmp_path_factory.mktemp("cli")
    c = Cluster(root)
    try:
        primary = c.primary()
        replica = c.replica("r1", primary)
        yield primary, replica
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)  # preallocated store maps: free the disk now


def lsn_of(out: str) -> int:
    return int(out.strip().splitlines()[-1])


def test_put_get_delete_on_primary_and_replica(nodes: tuple[Node, Node]) -> None:
    primary, replica = nodes
    put = kevo("put", "--node", primary.address, "pgd:a", "héllo wörld")
    assert put.returncode == 0, put.stderr
    lsn = lsn_of(put.stdout)
    got = kevo("get", "--node", replica.address, "pgd:a", "--min-lsn", str(lsn))
    assert (got.returncode, got.stdout) == (0, "héllo wörld\n"), got.stderr
    # A write sent to the replica is routed to its primary.
    via_replica = kevo("delete", "--node", replica.address, "pgd:a")
    assert via_replica.returncode == 0, via_replica.stderr
    assert lsn_of(via_replica.stdout) > lsn
    absent = kevo(
        "get", "--node", replica.address, "pgd:a", "--min-lsn", via_replica.stdout.strip()
    )
    assert absent.returncode == 1
    assert absent.stdout == ""
    assert "key 'pgd:a' not found" in absent.stderr


def test_get_min_lsn_in_the_future_times_out_with_a_message(nodes: tuple[Node, Node]) -> None:
    _, replica = nodes
    r = kevo("get", "--node", replica.address, "x", "--min-lsn", "999999999", "--timeout-ms", "200")
    assert r.returncode == 1
    assert "min_lsn 999999999 not reached in time" in r.stderr and "ERROR_" not in r.stderr


def test_put_wait_replicas_reports_how_many_applied(nodes: tuple[Node, Node]) -> None:
    primary, _ = nodes
    ok = kevo(
        "put",
        "--node",
        primary.address,
        "wr:k",
        "v",
        "--wait-replicas",
        "1",
        "--timeout-ms",
        "5000",
    )
    assert ok.returncode == 0, ok.stderr
    assert "replicas applied: 1 of 1 requested" in ok.stderr
    late = kevo(
        "put", "--node", primary.address, "wr:k", "v", "--wait-replicas", "2", "--timeout-ms",
        "200", "--wait-anyway",
    )  # fmt: skip
    assert late.returncode == 1
    assert "1 of 2 requested (timed out)" in late.stderr


def test_status_json_keys_on_primary_and_replica(nodes: tuple[Node, Node]) -> None:
    primary, replica = nodes
    p = kevo("status", "--node", primary.address, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {"role", "history_id", "lsn", "retained_from_lsn", "replicas"} <= doc.keys()
    assert doc["role"] == "primary"
    (r,) = doc["replicas"]
    assert {"id", "status", "applied_lsn", "lag_entries", "lag_ms"} <= r.keys()
    assert r["id"] == "r1"
    rep = json.loads(kevo("status", "--node", replica.address, "--json").stdout)
    assert {"role", "status", "applied_lsn", "primary"} <= rep.keys()
    assert rep["role"] == "replica" and rep["primary"] == primary.address
    text = kevo("status", "--node", primary.address).stdout
    assert "history" in text and "r1" in text and "LAG_MS" in text and "LINK" in text
    ready = kevo("status", "--node", replica.address, "--ready")
    assert ready.returncode == 0, ready.stdout


def test_status_watch_refreshes_until_ctrl_c(nodes: tuple[Node, Node]) -> None:
    primary, _ = nodes
    watch = Spawned.start(
        "status", "--node", primary.address, "--json", "--watch", "--interval", "0.1"
    )
    try:
        lines = watch.wait_lines(3)
        assert all(json.loads(line)["role"] == "primary" for line in lines[:3])
        watch.signal(signal.SIGINT)
        assert watch.wait() == 0
    finally:
        watch.kill()


def test_digest_identical_on_primary_and_replica(nodes: tuple[Node, Node]) -> None:
    primary, replica = nodes
    kevo("put", "--node", primary.address, "dg:1", "x")
    wait_for("replica converged", lambda: converged(primary, replica))
    p = json.loads(kevo("digest", "--node", primary.address, "--json").stdout)
    r = json.loads(kevo("digest", "--node", replica.address, "--json").stdout)
    assert p == r
    assert set(p) == {"lsn", "keys", "digest"} and len(p["digest"]) == 64
    text = kevo("digest", "--node", replica.address).stdout
    assert text.strip() == f"lsn={p['lsn']} keys={p['keys']} digest={p['digest']}"


def test_load_from_file_and_stdin(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    primary, replica = nodes
    data = tmp_path / "data.tsv"
    data.write_text("".join(f"ld:{i:04d}\tvalue {i}\twith tab\n" for i in range(2500)) + "\n")
    r = kevo("load", "--node", primary.address, str(data), "--batch", "300")
    assert r.returncode == 0, r.stderr
    last = lsn_of(r.stdout)
    assert "loaded 2500 entries in 9 batches" in r.stderr
    got = kevo("get", "--node", replica.address, "ld:2499", "--min-lsn", str(last))
    assert got.stdout == "value 2499\twith tab\n"
    # stdin, through the replica (routed to the primary), CRLF line ends.
    r2 = kevo("load", "--node", replica.address, "-", input=b"ld:s1\tone\r\nld:s2\ttwo\r\n")
    assert r2.returncode == 0, r2.stderr
    assert lsn_of(r2.stdout) == last + 2
    got = kevo("get", "--node", primary.address, "ld:s2")
    assert got.stdout == "two\n"


def test_load_bad_line_sends_no_part_of_its_batch(nodes: tuple[Node, Node]) -> None:
    primary, _ = nodes
    before = json.loads(kevo("status", "--node", primary.address, "--json").stdout)["lsn"]
    lines = [f"bad:{i}\tv" for i in range(1, 6)] + ["bad:6 no tab"] + ["bad:7\tv"]
    r = kevo("load", "--node", primary.address, "--batch", "2", input="\n".join(lines) + "\n")
    assert r.returncode == 1
    assert "line 6: no TAB between key and value" in r.stderr
    assert "lines 1-4 were committed (4 entries, up to LSN" in r.stderr
    assert "nothing from line 5 on was sent" in r.stderr
    after = json.loads(kevo("status", "--node", primary.address, "--json").stdout)["lsn"]
    assert after == before + 4
    assert kevo("get", "--node", primary.address, "bad:5").returncode == 1


def test_load_missing_file_is_a_clear_error(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    primary, _ = nodes
    r = kevo("load", "--node", primary.address, str(tmp_path / "nope.tsv"))
    assert r.returncode == 1
    assert "cannot read" in r.stderr and "nope.tsv" in r.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["digest"],
        ["get", "k"],
        ["put", "k", "v"],
        ["delete", "k"],
        ["load", "-"],
        ["tail", "--count", "1"],
    ],
)
def test_unreachable_node_fails_fast_with_a_message(command: list[str]) -> None:
    node = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = kevo(
        command[0], "--node", node, "--request-timeout-ms", "300", *command[1:], input="k\tv\n"
    )
    assert time.monotonic() - started < 10
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "connection refused by tcp://127.0.0.1:" in r.stderr and node in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "required: COMMAND"),
        (["nonsense"], "invalid choice"),
        (["get", "k"], "required: --node"),
        (["get", "--node", "no-port", "k"], "node address must be HOST:PORT"),
        (["put", "--node", "127.0.0.1:7100", "only-key"], "needs a VALUE or --value-file"),
        (["tail", "--node", "127.0.0.1:7100", "--from-lsn", "0"], "an LSN (1 or more) or -N"),
        (["status", "--node", "127.0.0.1:7100", "--interval", "0"], "between 0.1 and"),
        (["primary"], "--data is required"),
        (["replica", "--data", "d"], "--primary is required"),
        (["primary", "--data", "d", "--port", "70000"], "below 65535"),
        (["logs"], "required: --data"),
    ],
)
def test_bad_arguments_exit_2_with_usage(argv: list[str], needle: str) -> None:
    r = kevo(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "usage: kevo-repl" in r.stderr
    assert needle in r.stderr


def test_bench_runs_from_the_cli_and_prints_one_json_object() -> None:
    import json
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "bench", "zmq", "--batch", "16", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["command"] == "zmq" and doc["rows"][0]["entries_per_s"] > 0


def test_delete_of_an_absent_key_says_so_and_still_commits(nodes: tuple[Node, Node]) -> None:
    primary, replica = nodes
    assert kevo("put", "--node", primary.address, "dab:k", "v").returncode == 0
    first = kevo("delete", "--node", primary.address, "dab:k")
    assert first.returncode == 0 and "absent" not in first.stderr, first.stderr
    for extra in ((), ("--wait-replicas", "1", "--timeout-ms", "5000")):  # both reply paths
        again = kevo("delete", "--node", replica.address, "dab:k", *extra)  # via its primary
        assert again.returncode == 0, again.stderr
        assert "deleted (key was absent)" in again.stderr, again.stderr
        assert lsn_of(again.stdout) > lsn_of(first.stdout)  # committed, as Redis DEL counts
