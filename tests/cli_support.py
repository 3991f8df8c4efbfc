"""Running ``kevo-repl`` as a user would: a subprocess, its output, its exit code.

``kevo`` runs one command to completion (with a deadline, so a hang fails the test instead of
blocking it). ``Spawned`` starts a long-running one (cluster, tail, logs --follow, status
--watch), collects its stdout lines on a thread, lets a test wait for a line with a deadline,
and ends it by PID (never by name).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kevo_repl.testing.ports import free_port_pair

KEVO = [sys.executable, "-m", "kevo_repl"]

# Exec ARGV with SIGINT at its default. A shell's background jobs (and so a suite started
# from one) inherit SIGINT ignored, an exec keeps it ignored and Python then installs no
# KeyboardInterrupt handler: a test's Ctrl-C would do nothing. ``restore_signals`` does not
# cover SIGINT, and ``preexec_fn`` is unsafe with threads; this exec wrapper is neither.
SIGINT_DEFAULT = [
    sys.executable,
    "-S",
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def kevo(
    *args: str,
    input: bytes | str | None = None,
    timeout: float = 30.0,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``kevo-repl ARGS`` to completion; stdout and stderr as text."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [*KEVO, *args],
        input=data,
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=None if data is not None else subprocess.DEVNULL,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


@dataclass
class Spawned:
    """A running ``kevo-repl`` command whose stdout lines are collected as they come."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _done: bool = False

    @classmethod
    def start(cls, *args: str, stderr_to_stdout: bool = True) -> Spawned:
        """Start ``kevo-repl ARGS`` with SIGINT at its default, whatever ours is (a test
        sends it SIGINT as Ctrl-C would); the wrapper execs, so the PID is the command's."""
        argv = [*KEVO, *args]
        proc = subprocess.Popen(
            [*SIGINT_DEFAULT, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.DEVNULL,
            start_new_session=True,  # our signals reach it alone, by PID
        )
        spawned = cls(argv, proc)
        threading.Thread(target=spawned._pump, daemon=True).start()
        return spawned

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """The first line from index ``start`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self._done:
                    raise AssertionError(
                        f"no line matching {pattern!r} from {self.argv[3:]} "
                        f"(exit {self.proc.poll()}); output:\n" + "\n".join(self.lines[-40:])
                    )
                self._cond.wait(left)

    def wait_lines(self, count: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self._done:
                    raise AssertionError(
                        f"{len(self.lines)} of {count} lines from {self.argv[3:]}:\n"
                        + "\n".join(self.lines[-20:])
                    )
                self._cond.wait(left)
            return list(self.lines)

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        with self._cond:  # let the pump read what is left
            self._cond.wait_for(lambda: self._done, timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def sigint_disposition(pid: int) -> str:
    """``ignored``, ``caught`` or ``default``: what SIGINT does to ``pid`` (from /proc)."""
    masks = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("SigIgn", "SigCgt"):
                masks[name] = int(value, 16)
    bit = 1 << (signal.SIGINT - 1)
    if masks["SigIgn"] & bit:
        return "ignored"
    return "caught" if masks["SigCgt"] & bit else "default"


def kill_pid(pid: int) -> None:
    """SIGKILL one process we started (directly or through ``kevo-repl cluster``)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def free_cluster_base(replicas: int, extra: tuple[int, ...] = ()) -> int:
    """A port P with P, P+1, P+10, P+11, ... (one pair per node) all free right now, and
    P + each of ``extra`` (``cluster --failover``'s etcd: 90, 91)."""
    for _ in range(100):
        base = free_port_pair()
        if base + max((10 * replicas + 1, *extra)) >= 65535:
            continue
        ports = [base + 10 * i + d for i in range(1, replicas + 1) for d in (0, 1)]
        ports += [base + offset for offset in extra]
        try:
            socks = []
            for port in ports:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free block of ports")
