"""A single-member etcd of our own, for ``cluster --failover``, the tests and the soak.

It runs Debian's ``etcd`` binary (package ``etcd-server``) as a child process with its data
under the given directory, listening on one address (127.0.0.1 unless told). ``stop()``
ends exactly that process; ``start()`` again reuses the data directory, so the scope
survives a restart (the "etcd stopped and started again" fault). Where the binary is
missing, the error says how to install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from kevo_repl.core.errors import KevoError

__all__ = ["ETCD_MISSING", "LocalEtcd", "etcd_binary"]

ETCD_MISSING = (
    "the etcd binary was not found: install it with `apt-get install etcd-server` "
    "(Debian/Ubuntu), or set $KEVO_ETCD to its path"
)


def etcd_binary() -> str | None:
    """$KEVO_ETCD or ``etcd`` on PATH, if it is an executable (else None: ETCD_MISSING)."""
    return shutil.which(os.environ.get("KEVO_ETCD") or "etcd")


class LocalEtcd:
    """``etcd`` on ``host:client_port`` (peer port ``client_port + 1``); ``host`` is loopback,
    or an address of a network namespace's veth that a test made."""

    def __init__(
        self,
        data_dir: Path,
        client_port: int,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = client_port + 1
        self.log_path = log_path or data_dir.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, timeout_s: float = 30.0) -> LocalEtcd:
        binary = etcd_binary()
        if binary is None:
            raise KevoError(ETCD_MISSING)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            binary,
            "--name=kevo",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kevo={peer}",
            "--initial-cluster-state=new",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115  # the child keeps it
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_signals,
            )
        finally:
            log.close()
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-800:]
                raise KevoError(f"etcd exited with {self.proc.returncode}: {tail}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise KevoError(f"etcd on {self.url} did not become healthy in {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _default_signals() -> None:
    """In the child: SIGINT/SIGTERM as default (a background job may have ignored them)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
