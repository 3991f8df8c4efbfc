"""A bounded, pausable write load that records exactly which writes were acknowledged.

Every key is written once with a unique value, so "present after recovery" is a plain
``get(key) == value``. A write whose answer never came (primary killed mid-call) is counted
as ``unknown``, never as acknowledged: only an answer proves durability under fsync=always.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.client import Client, NodeUnreachableError, RemoteError

__all__ = ["AckLog", "Writer"]


@dataclass
class AckLog:
    """Acknowledged writes (key -> value, LSN), safe to read while the writer runs."""

    values: dict[bytes, bytes] = field(default_factory=dict)
    lsns: dict[bytes, int] = field(default_factory=dict)
    unknown: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: bytes, value: bytes, lsn: int) -> None:
        with self._lock:
            self.values[key] = value
            self.lsns[key] = lsn

    def snapshot(self) -> dict[bytes, bytes]:
        with self._lock:
            return dict(self.values)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def max_lsn(self) -> int:
        with self._lock:
            return max(self.lsns.values(), default=0)


class Writer(threading.Thread):
    """Puts unique keys to ``address`` until stopped, ``max_writes`` or ``max_seconds``.

    ``address`` may be a callable so a test can move the load to a restarted primary.
    Failures (primary down, refused) back off briefly and retry with a fresh client.
    """

    def __init__(
        self,
        address: str | Callable[[], str],
        *,
        prefix: str = "w",
        max_writes: int = 200_000,
        max_seconds: float = 120.0,
        value_bytes: int = 64,
        timeout_ms: int = 1000,
    ) -> None:
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self._address = address if callable(address) else (lambda: address)
        self.prefix = prefix
        self.max_writes = max_writes
        self.max_seconds = max_seconds
        self.pad = b"." * max(0, value_bytes - 24)
        self.timeout_ms = timeout_ms
        self.acked = AckLog()
        self.errors: list[BaseException] = []
        self._stop_evt = threading.Event()
        self._run_evt = threading.Event()
        self._run_evt.set()
        self._idle = threading.Event()

    def stop(self, join_s: float = 30.0) -> None:
        self._stop_evt.set()
        self._run_evt.set()
        self.join(join_s)

    def pause(self, timeout_s: float = 10.0) -> None:
        """Stop writing and wait until no write is in flight (for a quiescent digest)."""
        self._idle.clear()
        self._run_evt.clear()
        if self.is_alive() and not self._idle.wait(timeout_s):
            raise AssertionError("writer did not pause in time")

    def resume(self) -> None:
        self._run_evt.set()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        i = 0
        client: Client | None = None
        try:
            while not self._stop_evt.is_set() and i < self.max_writes:
                if time.monotonic() > deadline:
                    break
                if not self._run_evt.is_set():
                    self._idle.set()
                    self._run_evt.wait(1.0)
                    continue
                if client is None:
                    client = Client(self._address(), timeout_ms=self.timeout_ms)
                key = f"{self.prefix}-{i:08d}".encode()
                value = b"%s:%d:" % (self.prefix.encode(), i) + self.pad
                i += 1
                try:
                    lsn = client.put(key, value).lsn
                except NodeUnreachableError:
                    self.acked.unknown += 1
                    client.close()
                    client = None
                    self._stop_evt.wait(0.05)  # back off; the primary is down or restarting
                    continue
                except RemoteError:
                    self.acked.refused += 1
                    self._stop_evt.wait(0.05)
                    continue
                self.acked.add(key, value, lsn)
        except BaseException as exc:  # surfaced by the test via .errors
            self.errors.append(exc)
        finally:
            self._idle.set()
            if client is not None:
                client.close()
