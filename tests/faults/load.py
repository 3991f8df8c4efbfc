"""A bounded, pausable write load that records exactly what each write's outcome allows.

Write ``i`` carries its sequence number in its value. Most writes go to a key of their own;
every third one (``i % HOT_EVERY == HOT_EVERY - 1``) overwrites one of ``HOT_KEYS`` hot keys
in turn, so batches applied out of order, twice or not at all leave a hot key with another
value than the primary's: the digest and the read-back see it.

Outcomes: an answer with an LSN is *acknowledged* (durable under fsync=always); no answer
(primary killed or frozen mid-call) or ``ERROR_OUTCOME_UNKNOWN`` (the WAL failed mid-write)
is *unknown*: committed or not; any other ``Error`` answer is *refused*: not committed.
``AckLog.expected()`` turns that into the exact set of values each key may hold now: the
value of its last acknowledged write (absent if it has none), plus the value of every write
to it with an unknown outcome issued after that one. Never "any value". One write is in
flight at a time, and writes to one hot key are ``HOT_EVERY * HOT_KEYS`` writes apart, so an
unknown write the primary took at all was taken before the next write to its key was sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kevo_repl.client import Client, NodeUnreachableError, RemoteError
from kevo_repl.wire import pb

__all__ = ["HOT_EVERY", "HOT_KEYS", "AckLog", "Allowed", "Writer", "write_key"]

HOT_EVERY = 3  # every third write overwrites a hot key
HOT_KEYS = 12

# the values a key may hold after the load (None: absent)
Allowed = frozenset[bytes | None]


def write_key(prefix: str, i: int, hot_keys: int = HOT_KEYS) -> bytes:
    """The key of write ``i``: its own, or one of ``hot_keys`` hot keys for every third."""
    if hot_keys and i % HOT_EVERY == HOT_EVERY - 1:
        return f"{prefix}-hot-{(i // HOT_EVERY) % hot_keys:02d}".encode()
    return f"{prefix}-{i:08d}".encode()


@dataclass(slots=True)
class _KeyState:
    acked: bytes | None = None  # value of the last acknowledged write (None: none yet)
    later_unknown: tuple[bytes, ...] = ()  # values of unknown-outcome writes issued after it


@dataclass
class AckLog:
    """Every write's outcome, per key; safe to read while the writer runs.

    ``len()`` is the number of acknowledged writes; ``acked_keys`` how many keys they touched.
    """

    acked_writes: int = 0
    unknown: int = 0
    refused: int = 0
    last_lsn: int = 0
    refusals: list[str] = field(default_factory=list)  # the first few refusals' errors
    _keys: dict[bytes, _KeyState] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: bytes, value: bytes, lsn: int) -> None:
        """An acknowledged write: the key's value from now on, whatever came before."""
        with self._lock:
            # one write in flight at a time: each acknowledgement has a higher LSN
            assert lsn > self.last_lsn, f"write acknowledged at LSN {lsn} after {self.last_lsn}"
            self.last_lsn = lsn
            state = self._state(key)
            state.acked = value
            state.later_unknown = ()  # those were issued before this one was acknowledged
            self.acked_writes += 1

    def add_unknown(self, key: bytes, value: bytes) -> None:
        """A write whose answer never came: committed or not, maybe after later writes."""
        with self._lock:
            state = self._state(key)
            state.later_unknown += (value,)
            self.unknown += 1

    def add_refused(self, key: bytes, why: str) -> None:
        """A write the primary answered with an error: it changed nothing."""
        with self._lock:
            self._state(key)
            self.refused += 1
            if len(self.refusals) < 5:
                self.refusals.append(why)

    def _state(self, key: bytes) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    def expected(self) -> dict[bytes, Allowed]:
        """Each key the load wrote -> the exact set of values it may hold now."""
        with self._lock:
            return {key: frozenset([s.acked, *s.later_unknown]) for key, s in self._keys.items()}

    def __len__(self) -> int:
        return self.acked_writes

    @property
    def acked_keys(self) -> int:
        with self._lock:
            return sum(1 for s in self._keys.values() if s.acked is not None)

    @property
    def max_lsn(self) -> int:
        return self.last_lsn


class Writer(threading.Thread):
    """Puts to ``address`` until stopped, ``max_writes`` or ``max_seconds`` (see module doc).

    ``address`` may be a callable so a test can move the load to a restarted primary.
    Failures (primary down, refused) back off briefly and retry with a fresh client.
    ``hot_keys=0`` writes every key once.
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
        hot_keys: int = HOT_KEYS,
    ) -> None:
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self._address = address if callable(address) else (lambda: address)
        self.prefix = prefix
        self.max_writes = max_writes
        self.max_seconds = max_seconds
        self.pad = b"." * max(0, value_bytes - 24)
        self.timeout_ms = timeout_ms
        self.hot_keys = hot_keys
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
                key = write_key(self.prefix, i, self.hot_keys)
                value = b"%s:%d:" % (self.prefix.encode(), i) + self.pad
                i += 1
                try:
                    lsn = client.put(key, value).lsn
                except NodeUnreachableError:
                    self.acked.add_unknown(key, value)
                    client.close()
                    client = None
                    self._stop_evt.wait(0.05)  # back off; the primary is down or restarting
                    continue
                except RemoteError as exc:
                    if exc.code == pb.ERROR_OUTCOME_UNKNOWN:  # the WAL failed mid-write
                        self.acked.add_unknown(key, value)
                    else:
                        self.acked.add_refused(key, str(exc))
                    self._stop_evt.wait(0.05)
                    continue
                self.acked.add(key, value, lsn)
        except BaseException as exc:  # surfaced by the test via .errors
            self.errors.append(exc)
        finally:
            self._idle.set()
            if client is not None:
                client.close()
