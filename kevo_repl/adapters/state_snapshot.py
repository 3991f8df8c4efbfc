"""Consistent snapshots of the state store and content digests.

A :class:`StoreSnapshot` is one LMDB read transaction: MVCC gives it exactly the state at its
LSN while writers go on. It keeps no cursor between chunks: each chunk opens a cursor, reads
up to ``max_bytes`` and closes it, and no lock is held across a ``yield``, so the caller may
apply batches between chunks from the same thread. Growing the map (``set_mapsize``) aborts
every open transaction in py-lmdb, so a snapshot that is open while the map must grow is
lost: it raises :class:`SnapshotLostError` instead of returning anything wrong, and the
caller takes a new one (the store grows the map ahead of time to make that rare).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import lmdb

from kevo_repl.adapters.state_format import Db, Env, ReadGate, read_meta, storage_error
from kevo_repl.core.errors import StorageError

__all__ = ["SnapshotLostError", "StoreDigest", "StoreSnapshot", "digest_items"]

_LEN: Final = struct.Struct(">Q")


class SnapshotLostError(StorageError):
    """The snapshot's read transaction ended under it (map growth or store close)."""


@dataclass(frozen=True, slots=True)
class StoreDigest:
    """SHA-256 over the store's pairs in key order, and the LSN that content reflects."""

    lsn: int
    keys: int
    sha256: str


def digest_items(items: Iterable[tuple[bytes, bytes]]) -> str:
    """Digest of ``items`` taken in the order given (pass them sorted by key).

    Each pair is hashed as ``len(key) key len(value) value`` with 8-byte big-endian lengths, so
    no two different contents share an encoding. Also the oracle for tests' dict models.
    """
    h = hashlib.sha256()
    pack = _LEN.pack
    h.update(b"".join(pack(len(k)) + k + pack(len(v)) + v for k, v in items))
    return h.hexdigest()


class StoreSnapshot:
    """One read transaction over the store: the exact state at :attr:`lsn`.

    Obtain from ``StateStore.snapshot()``; use as a context manager or ``close()`` it, since it
    holds an LMDB reader slot and pins the pages of its version (the file grows meanwhile).
    """

    def __init__(
        self, env: Env, data: Db, meta: Db, gate: ReadGate, path: Path,
        on_close: Callable[[StoreSnapshot], None],
    ) -> None:  # fmt: skip
        self._data = data
        self._gate = gate
        self._path = path
        self._on_close = on_close
        self._lost: str | None = None
        gate.enter()
        try:
            self._txn: lmdb.Transaction[bytes] | None = env.begin()
            self._lsn, self._history_id = read_meta(self._txn, meta)
            self._key_count = self._txn.stat(data)["entries"]
        except lmdb.Error as exc:
            raise storage_error(path, "begin snapshot", exc) from exc
        finally:
            gate.leave()

    @property
    def lsn(self) -> int:
        return self._lsn

    @property
    def history_id(self) -> bytes | None:
        return self._history_id

    @property
    def key_count(self) -> int:
        return self._key_count

    def progress(self, keys_sent: int) -> float:
        """Fraction 0..1 of this snapshot's keys that ``keys_sent`` represents."""
        if self._key_count == 0:
            return 1.0
        return min(1.0, max(0.0, keys_sent / self._key_count))

    def chunks(
        self, max_bytes: int, after_key: bytes | None = None, prefix: bytes = b""
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Yield ``(keys, values)`` in key order, each chunk about ``max_bytes`` of keys+values.

        A chunk holds at least one pair and stops at the first pair that reaches ``max_bytes``.
        ``after_key`` resumes after that key (a bootstrap continuing from its last chunk);
        ``prefix``: only keys starting with it (a scan). Without a prefix the stream is
        complete when the keys sent reach :attr:`key_count`.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        resume = after_key
        if prefix and (resume is None or resume < prefix):
            keys, values, more = self._read_chunk(prefix, max_bytes, prefix, inclusive=True)
            if keys:
                yield keys, values
            if not more:
                return
            resume = keys[-1]
        while True:
            keys, values, more = self._read_chunk(resume, max_bytes, prefix)
            if keys:
                yield keys, values
            if not more:
                return
            resume = keys[-1]

    def digest(self, chunk_bytes: int = 1 << 20) -> StoreDigest:
        """:class:`StoreDigest` of this snapshot (see :func:`digest_items` for the encoding)."""
        h = hashlib.sha256()
        pack = _LEN.pack
        count = 0
        for keys, values in self.chunks(chunk_bytes):
            h.update(
                b"".join(
                    pack(len(k)) + k + pack(len(v)) + v for k, v in zip(keys, values, strict=True)
                )
            )
            count += len(keys)
        return StoreDigest(self._lsn, count, h.hexdigest())

    def _read_chunk(
        self, after: bytes | None, max_bytes: int, prefix: bytes = b"", inclusive: bool = False
    ) -> tuple[list[bytes], list[bytes], bool]:
        keys: list[bytes] = []
        values: list[bytes] = []
        self._gate.enter()
        try:
            txn = self._require_txn()
            with txn.cursor(db=self._data) as cur:
                found = cur.set_range(after) if after else cur.first()
                if found and after is not None and cur.key() == after and not inclusive:
                    found = cur.next()
                size = 0
                while found:
                    key, value = cur.item()
                    if prefix and not key.startswith(prefix):
                        return keys, values, False  # past the prefix: the scan is done
                    keys.append(key)
                    values.append(value)
                    size += len(key) + len(value)
                    found = cur.next()
                    if size >= max_bytes:
                        break
                return keys, values, found
        except lmdb.Error as exc:
            if self._lost is not None:
                raise SnapshotLostError(f"snapshot at LSN {self._lsn} lost: {self._lost}") from exc
            raise storage_error(self._path, "read snapshot", exc) from exc
        finally:
            self._gate.leave()

    def _require_txn(self) -> lmdb.Transaction[bytes]:
        if self._lost is not None:
            raise SnapshotLostError(f"snapshot at LSN {self._lsn} lost: {self._lost}")
        if self._txn is None:
            raise StorageError(f"snapshot at LSN {self._lsn} of {self._path} is closed")
        return self._txn

    def invalidate(self, reason: str) -> None:
        """End the transaction and mark the snapshot lost (before a map resize or close).

        py-lmdb 3 aborts open transactions in ``set_mapsize`` itself; older versions do not,
        and a read transaction must not outlive the mapping it reads.
        """
        self._lost = reason
        txn, self._txn = self._txn, None
        if txn is not None:
            with suppress(lmdb.Error):
                txn.abort()

    def close(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            with suppress(lmdb.Error):  # already ended by a resize or close
                txn.abort()
        self._on_close(self)

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
