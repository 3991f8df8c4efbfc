"""``kevo-repl logs`` on log files written by the test: merge order, filters, follow."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.cli_support import Spawned, kevo, sigint_disposition


def record(ts: str, node: str, event: str, level: str = "info", **fields: object) -> str:
    doc = {"node": node, "role": "x", **fields, "event": event, "level": level}
    return json.dumps({**doc, "timestamp": f"2026-01-01T00:00:{ts}Z"}) + "\n"


def write_logs(root: Path) -> Path:
    logs = root / "logs"
    logs.mkdir(parents=True)
    (logs / "primary.log").write_text(
        record("01.000000", "primary", "started", lsn=0)
        + record("03.500000", "primary", "replica_disconnected", "warning", replica_id="r1")
        + record("05", "primary", "stopped", lsn=7)  # no fraction: still ordered by time
    )
    (logs / "r1.log").write_text(
        record("02.250000", "r1", "started")
        + "Traceback (most recent call last):\n"
        + record("04.000000", "r1", "gap_detected", "warning", lsn=5)
        + "partial line without newline"
    )
    return root


def test_logs_merges_files_in_time_order(tmp_path: Path) -> None:
    data = write_logs(tmp_path)
    r = kevo("logs", "--data", str(data), "--no-follow", "--format", "json")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    events = [(d["node"], d.get("event") or d["raw"][:9]) for d in docs]
    assert events == [
        ("primary", "started"),
        ("r1", "started"),
        ("r1", "Traceback"),  # not JSON: shown as it is, with the time of the line before
        ("primary", "replica_disconnected"),
        ("r1", "gap_detected"),
        ("primary", "stopped"),
    ]  # the unterminated last line is not shown until it is complete


def test_logs_filters_by_node_and_level_and_renders_text(tmp_path: Path) -> None:
    data = write_logs(tmp_path)
    r1 = kevo("logs", "--data", str(data), "--no-follow", "--node", "r1").stdout.splitlines()
    assert [line.split()[0] for line in r1] == ["[r1]"] * 3
    assert r1[0].endswith(" info    started")
    assert r1[1] == "[r1] Traceback (most recent call last):"
    warn = kevo("logs", "--data", str(data), "--no-follow", "--level", "warning").stdout
    lines = warn.splitlines()
    assert len(lines) == 3  # two warnings and the traceback (shown at level error)
    assert "[primary]" in lines[1] and "replica_disconnected replica_id=r1" in lines[1]
    assert lines[2].startswith("[r1] ") and "gap_detected lsn=5" in lines[2]
    last = kevo("logs", "--data", str(data), "--no-follow", "--lines", "1").stdout
    assert last.startswith("[primary]") and "stopped lsn=7" in last


def test_logs_follow_prints_new_lines_and_new_files(tmp_path: Path) -> None:
    data = write_logs(tmp_path)
    follow = Spawned.start("logs", "--data", str(data), "--format", "json", "--lines", "1")
    try:
        follow.wait_line('"event": "stopped"')
        with (data / "logs" / "r1.log").open("a") as f:
            f.write(" now complete\n" + record("06.000000", "r1", "recovered"))
        (data / "logs" / "r2.log").write_text(record("07.000000", "r2", "started"))
        follow.wait_line('"event": "recovered"')
        follow.wait_line('"node": "r2"')
        assert any("partial line without newline now complete" in line for line in follow.lines)
        follow.signal(signal.SIGINT)
        assert follow.wait() == 0
    finally:
        follow.kill()


def test_ctrl_c_stops_follow_even_when_the_suite_ignores_sigint(tmp_path: Path) -> None:
    """A suite started as a shell's background job inherits SIGINT ignored, and so would
    every command it starts: ``Spawned`` resets SIGINT for them, so Ctrl-C tests still work."""
    data = write_logs(tmp_path)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `trap "" INT`
    try:
        plain = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL
        )
        follow = Spawned.start("logs", "--data", str(data), "--format", "json", "--lines", "1")
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        # What a child inherits without the reset: Ctrl-C would do nothing to it.
        assert sigint_disposition(plain.pid) == "ignored"
        follow.wait_line('"event": "stopped"')
        assert sigint_disposition(follow.proc.pid) == "caught"  # Python's KeyboardInterrupt
        follow.signal(signal.SIGINT)
        assert follow.wait() == 0
    finally:
        follow.kill()
        plain.kill()
        plain.wait(10)


def test_logs_without_a_cluster_dir_is_a_clear_error(tmp_path: Path) -> None:
    r = kevo("logs", "--data", str(tmp_path / "nothing"), "--no-follow")
    assert r.returncode == 1
    assert "no logs in" in r.stderr and "kevo-repl cluster --data" in r.stderr
