"""Reads of the LMDB state store inside one read transaction: a value, a bounded prefix of
keys, a key range. Each also returns what ``applied_lsn`` the transaction saw, so a caller
knows which state of the history it read (``StateStore`` opens the transaction)."""

from __future__ import annotations

from collections.abc import Sequence

import lmdb

from kevo_repl.adapters.state_format import Db, read_meta

__all__ = ["read_one", "read_prefix", "scan_range"]


def read_one(
    txn: lmdb.Transaction[bytes], data: Db, meta: Db, key: bytes
) -> tuple[bytes | None, int]:
    """The value of ``key`` (None: absent) and the ``applied_lsn`` it reflects."""
    lsn = read_meta(txn, meta)[0]
    try:
        return txn.get(key, db=data), lsn
    except lmdb.BadValsizeError:
        return None, lsn  # an empty key is never stored


def read_prefix(
    txn: lmdb.Transaction[bytes], data: Db, meta: Db, keys: Sequence[bytes], max_bytes: int
) -> tuple[list[bytes | None], int]:
    """Values of a prefix of ``keys``, stopping before ``max_bytes`` (at least one)."""
    lsn = read_meta(txn, meta)[0]
    out: list[bytes | None] = []
    size = 0
    for key in keys:
        try:
            value = txn.get(key, db=data)
        except lmdb.BadValsizeError:
            value = None
        size += len(key) + len(value or b"")
        if out and size > max_bytes:
            break
        out.append(value)
    return out, lsn


def scan_range(
    txn: lmdb.Transaction[bytes], data: Db, start: bytes, end: bytes | None, limit: int | None
) -> list[tuple[bytes, bytes]]:
    """Pairs with ``start <= key < end`` in key order, at most ``limit`` of them."""
    out: list[tuple[bytes, bytes]] = []
    if limit is not None and limit <= 0:
        return out
    with txn.cursor(db=data) as cursor:
        found = cursor.set_range(start) if start else cursor.first()
        while found:
            key, value = cursor.item()
            if end is not None and key >= end:
                break
            out.append((key, value))
            if limit is not None and len(out) >= limit:
                break
            found = cursor.next()
    return out
