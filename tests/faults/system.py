"""Root-only fault plumbing: network namespaces joined by veth, nftables drop rules, tmpfs.

Everything here creates its own objects (a namespace named after our PID, a veth pair, a
/30 of 10.x addresses not in use on the host, an nftables table inside that namespace, a
tmpfs under a temp dir) and removes exactly those; nothing touches the host's own rules or
addresses. ``skip_reason()`` says why a test cannot run here (not root, no ``ip``/``nft``, a
kernel without namespaces or nf_tables), so tests skip with that reason instead of failing.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

__all__ = ["NetNs", "mount_tmpfs", "resize_tmpfs", "skip_reason", "tmpfs_skip_reason"]

_TABLE = "kvfault"
_counter = itertools.count()


def _run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@cache
def skip_reason() -> str | None:
    """None when netns + veth + nftables work here, else why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and nftables"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed (apt-get install iproute2 nftables)"
    try:
        with NetNs() as ns:
            ns.loss(5)
            ns.heal()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces or nf_tables unavailable on this kernel: {exc}"
    return None


@cache
def tmpfs_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount not installed"
    return None


class NetNs:
    """A namespace ``kvf<pid>_<n>`` with a veth pair to the host and a private /30."""

    def __init__(self) -> None:
        n = next(_counter)
        tag = f"{os.getpid() % 100000}x{n}"
        self.name = f"kvf{tag}"
        self.host_if = f"kvh{tag}"[:15]
        self.ns_if = f"kvn{tag}"[:15]
        self.host_ip, self.ns_ip = _free_slash30()
        self._created = False

    def __enter__(self) -> NetNs:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def exec_prefix(self) -> list[str]:
        """Run a command inside: ``ip netns exec`` execs it, so its PID is the command's."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        self._created = True
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        _run("ip", "-n", self.name, "link", "set", "lo", "up")

    def _nft(self, script: str) -> None:
        _run(*self.exec_prefix, "nft", "-f", "-", stdin=script)

    def partition(self) -> None:
        """Drop every packet in and out of the namespace's veth (both directions)."""
        self._rules(f'iifname "{self.ns_if}" drop', f'oifname "{self.ns_if}" drop')

    def cut_port(self, host: str, port: int) -> None:
        """Drop only the namespace's traffic with ``host:port`` (one service, both ways)."""
        self._rules(
            f"ip saddr {host} tcp sport {port} drop", f"ip daddr {host} tcp dport {port} drop"
        )

    def loss(self, percent: int) -> None:
        """Drop ``percent`` % of packets each way at random (netem is not available here)."""
        self._rules(
            f'iifname "{self.ns_if}" numgen random mod 100 < {percent} drop',
            f'oifname "{self.ns_if}" numgen random mod 100 < {percent} drop',
        )

    def _rules(self, rule_in: str, rule_out: str) -> None:
        self.heal()
        self._nft(
            f"table inet {_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; {rule_in}; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; {rule_out}; }}\n"
            "}\n"
        )

    def heal(self) -> None:
        """Remove our table (and with it every drop rule); fine if there is none."""
        _run(*self.exec_prefix, "nft", "delete", "table", "inet", _TABLE, check=False)

    def close(self) -> None:
        """Delete the namespace (its veth end goes with it, and so does the host end)."""
        if not self._created:
            return
        self._created = False
        _run("ip", "netns", "del", self.name, check=False)
        _run("ip", "link", "del", self.host_if, check=False)


def _free_slash30() -> tuple[str, str]:
    """Two addresses of a 10.x.y.z/30 that no host interface uses now."""
    used = _run("ip", "-4", "-o", "addr", "show")
    rng = random.Random()
    for _ in range(200):
        a, b, c = rng.randrange(200, 250), rng.randrange(256), rng.randrange(0, 256, 4)
        prefix = f"10.{a}.{b}."
        if prefix not in used:
            return f"{prefix}{c + 1}", f"{prefix}{c + 2}"
    raise RuntimeError("no free 10.x /30 for a test namespace")


@contextmanager
def mount_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` at ``path`` (created), unmounted when the block ends."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path))
    try:
        yield path
    finally:
        if _run("umount", str(path), check=False) or os.path.ismount(path):
            _run("umount", "-l", str(path), check=False)


def resize_tmpfs(path: Path, size_bytes: int) -> None:
    """Grow or shrink a mounted tmpfs (the "space returns" step of a full-disk test)."""
    _run("mount", "-o", f"remount,size={size_bytes}", str(path))
