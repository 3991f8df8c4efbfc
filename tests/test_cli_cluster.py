"""``kevo-repl cluster`` and ``kevo-repl logs`` on a real local cluster.

The cluster's children are ended by the cluster itself; if a test fails first, every PID the
cluster printed is killed, then the cluster's own (never by name).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.cli_support import Spawned, free_cluster_base, kevo, kill_pid, pid_alive
from tests.nodes import wait_for

PID_LINE = r"\[cluster\] (\S+): PUB (\S+), ROUTER \S+ \(pid (\d+)\)"


def gone(pid: int) -> bool:
    return not pid_alive(pid)


class RunningCluster:
    def __init__(self, data: Path, replicas: int, *extra: str) -> None:
        self.base = free_cluster_base(replicas)
        self.data = data
        self.proc = Spawned.start(
            "cluster", "--data", str(data), "--replicas", str(replicas),
            "--port", str(self.base), *extra,
        )  # fmt: skip
        self.pids: dict[str, int] = {}
        self.endpoints: dict[str, str] = {}
        self.proc.wait_line(r"\[cluster\] (ready|a node did not come up)")
        for line in self.proc.lines:
            m = re.search(PID_LINE, line)
            if m:
                self.pids[m[1]] = int(m[3])
                self.endpoints[m[1]] = m[2]
        assert len(self.pids) == replicas + 1, self.proc.output()

    def cleanup(self) -> None:
        for pid in self.pids.values():
            kill_pid(pid)
        self.proc.kill()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[RunningCluster]]:
    started: list[RunningCluster] = []
    try:
        yield started
    finally:
        for c in started:
            c.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cluster_starts_reports_and_stops(
    running: list[RunningCluster], tmp_path: Path, sig: signal.Signals
) -> None:
    c = RunningCluster(tmp_path / "c", 2)
    running.append(c)
    c.proc.wait_line(r"\[cluster\] ready")
    assert set(c.endpoints) == {"primary", "replica-1", "replica-2"}
    assert c.endpoints["replica-2"] == f"127.0.0.1:{c.base + 20}"
    put = kevo("put", "--node", c.endpoints["primary"], "k", "v", "--wait-replicas", "2",
               "--timeout-ms", "5000")  # fmt: skip
    assert put.returncode == 0 and "2 of 2" in put.stderr, put.stderr
    status = json.loads(kevo("status", "--node", c.endpoints["primary"], "--json").stdout)
    assert sorted(r["id"] for r in status["replicas"]) == ["replica-1", "replica-2"]
    # The merged view shows every node's lines with its prefix.
    for name in ("primary", "replica-1", "replica-2"):
        c.proc.wait_line(rf"^\[{name}\] .* started ")
    c.proc.signal(sig)
    assert c.proc.wait() == 0, c.proc.output()
    assert c.proc.lines[-1] == "[cluster] stopped"
    for name, pid in c.pids.items():
        wait_for(f"{name} gone", partial(gone, pid), timeout_s=5)
    # Each node's JSON log is in DIR/logs/<node>.log, ending with its clean stop.
    for name in ("primary", "replica-1", "replica-2"):
        lines = (tmp_path / "c" / "logs" / f"{name}.log").read_text().splitlines()
        assert json.loads(lines[-1])["event"] == "stopped", lines[-3:]


def test_cluster_reports_a_crash_and_restarts_with_restart(
    running: list[RunningCluster], tmp_path: Path
) -> None:
    c = RunningCluster(tmp_path / "c", 1, "--restart")
    running.append(c)
    mark = len(c.proc.lines)
    kill_pid(c.pids["replica-1"])
    c.proc.wait_line(r"\[cluster\] replica-1 crashed \(signal 9\)", start=mark)
    m = c.proc.wait_line(r"\[cluster\] restarted replica-1 as PID (\d+) \(restart 1\)", start=mark)
    assert m and int(m.group(1)) != c.pids["replica-1"]  # the new PID, to follow or stop
    wait_for(
        "replica-1 serves again",
        lambda: kevo("status", "--node", c.endpoints["replica-1"], "--ready").returncode == 0,
        timeout_s=20,
    )
    c.proc.signal(signal.SIGTERM)
    assert c.proc.wait() == 0


def test_cluster_without_restart_reports_and_keeps_the_others(
    running: list[RunningCluster], tmp_path: Path
) -> None:
    c = RunningCluster(tmp_path / "c", 1)
    running.append(c)
    kill_pid(c.pids["replica-1"])
    c.proc.wait_line(r"replica-1 crashed \(signal 9\)")
    c.proc.wait_line(r"replica-1 stays down \(use --restart")
    assert kevo("status", "--node", c.endpoints["primary"]).returncode == 0
    c.proc.signal(signal.SIGTERM)
    assert c.proc.wait() == 0


def test_logs_follows_the_cluster_merged_and_filtered(
    running: list[RunningCluster], tmp_path: Path
) -> None:
    data = tmp_path / "c"
    c = RunningCluster(data, 1)
    running.append(c)
    follow = Spawned.start("logs", "--data", str(data), "--node", "primary", "--format", "json")
    try:
        follow.wait_line('"event": "started"')
        # A replica that goes silent is marked disconnected: a warning on the primary.
        kill_pid(c.pids["replica-1"])
        follow.wait_line('"event": "replica_disconnected"', timeout=10)
        assert all(json.loads(line)["node"] == "primary" for line in follow.lines)
        follow.signal(signal.SIGINT)
        assert follow.wait() == 0
    finally:
        follow.kill()
    everything = kevo("logs", "--data", str(data), "--no-follow")
    assert everything.returncode == 0
    lines = everything.stdout.splitlines()
    assert {line.split("]")[0] + "]" for line in lines} == {"[primary]", "[replica-1]"}
    warnings = kevo("logs", "--data", str(data), "--no-follow", "--level", "warning").stdout
    assert warnings.splitlines() and all(" warning " in line for line in warnings.splitlines())
    assert "replica_disconnected replica_id=replica-1" in warnings
    c.proc.signal(signal.SIGTERM)
    assert c.proc.wait() == 0


def test_cluster_refuses_ports_in_use(tmp_path: Path) -> None:
    base = free_cluster_base(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 11))  # replica-1's ROUTER
        r = kevo("cluster", "--data", str(tmp_path / "c"), "--replicas", "1", "--port", str(base))
    assert r.returncode == 1
    assert f"port {base + 11} for replica-1 is in use" in r.stderr
    assert not (tmp_path / "c" / "logs").exists()  # nothing was started


def test_cluster_notes_go_to_stderr_and_node_logs_to_stdout(tmp_path: Path) -> None:
    from tests.cli_support import KEVO, SIGINT_DEFAULT

    base = free_cluster_base(1)
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    argv = ["cluster", "--data", str(tmp_path / "c"), "--replicas", "1", "--port", str(base)]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [*SIGINT_DEFAULT, *KEVO, *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
    pids: list[int] = []
    try:
        wait_for("ready on stderr", lambda: "[cluster] ready" in err_path.read_text())
        pids = [int(m[3]) for m in re.finditer(PID_LINE, err_path.read_text())]
        assert len(pids) == 2, err_path.read_text()
        wait_for("node logs on stdout", lambda: "[replica-1]" in out_path.read_text())
        assert "[cluster]" not in out_path.read_text()
        assert "[primary]" not in err_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "[cluster] stopped" in err_path.read_text()
    finally:
        for pid in pids:
            kill_pid(pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
