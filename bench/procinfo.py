"""The machine and process memory: /proc readers and a peak-RSS sampler thread."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RssSampler",
    "children",
    "cpu_seconds",
    "machine",
    "machine_info",
    "private_kib",
    "reaped_children_cpu",
    "rss_kib",
    "status_kib",
]


def machine() -> str:
    cpus = os.cpu_count()
    return f"{cpus} cores, Linux {platform.release()}, CPython {platform.python_version()}"


def machine_info() -> dict[str, Any]:
    """What docs/benchmarks.md records next to every figure."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        df = (
            subprocess.run(
                ["df", "-T", os.environ.get("KEVO_BENCH_DIR") or "/tmp"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            .stdout.splitlines()[-1]
            .split()
        )
        fs = f"{df[1]} on {df[0]}"
    except (OSError, IndexError, subprocess.SubprocessError):
        fs = "unknown"
    return {
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tmp_fs": fs,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reaped_children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for (load generators)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def status_kib(pid: int, field_name: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM, RssAnon, RssFile); 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def private_kib(pid: int) -> int:
    """Private (not shared) resident memory: a fork child's copy-on-write cost."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


@dataclass
class RssSampler:
    """Samples VmRSS (and RssAnon) of some PIDs, plus fork children's private memory."""

    pids: dict[str, int]
    every: float = 0.02
    peak_kib: dict[str, int] = field(default_factory=dict)
    peak_anon_kib: dict[str, int] = field(default_factory=dict)
    peak_child_private_kib: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_kib[name] = max(self.peak_kib.get(name, 0), rss_kib(pid))
            anon = status_kib(pid, "RssAnon")
            self.peak_anon_kib[name] = max(self.peak_anon_kib.get(name, 0), anon)
            child = sum(private_kib(c) for c in children(pid))
            self.peak_child_private_kib[name] = max(self.peak_child_private_kib.get(name, 0), child)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def settle(seconds: float) -> None:
    """Let the machine go quiet between measurements (checkpoints, page cache writeback)."""
    time.sleep(seconds)
