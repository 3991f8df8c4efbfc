"""Batches for the state store: their shape, and the check of a run of them against the
store's ``applied_lsn`` before any is written (so a bad one changes nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kevo_repl.core.errors import LsnGapError, ProtocolError
from kevo_repl.core.ops import KNOWN_OPS, OP_PUT

__all__ = ["Batch", "Pending", "plan_batches"]

_PUTS_ONLY: Final = frozenset({OP_PUT})

Batch = tuple[int, int, Sequence[int], Sequence[bytes], Sequence[bytes]]
"""``(first_lsn, last_lsn, ops, keys, values)``: one WAL batch, columnar."""

Pending = tuple[int, bool, Sequence[int], Sequence[bytes], Sequence[bytes]]
"""``(last_lsn, puts_only, ops, keys, values)``: a batch still to apply."""


def plan_batches(batches: Sequence[Batch], applied_lsn: int) -> list[Pending]:
    """Validate every batch before touching the store; keep the ones not yet applied."""
    pending: list[Pending] = []
    expected = applied_lsn + 1
    for first_lsn, last_lsn, ops, keys, values in batches:
        count = len(keys)
        if len(ops) != count or len(values) != count:
            raise ProtocolError(f"ragged batch: {len(ops)} ops, {count} keys, {len(values)} values")
        if count == 0 or first_lsn < 1 or last_lsn - first_lsn + 1 != count:
            raise ProtocolError(f"batch LSNs {first_lsn}..{last_lsn} do not match {count} entries")
        if last_lsn < expected:
            continue  # already applied
        if first_lsn != expected:
            raise LsnGapError(expected, first_lsn)
        kinds = frozenset(ops)
        if not kinds <= KNOWN_OPS:
            raise ProtocolError(f"unknown op in batch: {sorted(kinds - KNOWN_OPS)}")
        pending.append((last_lsn, kinds == _PUTS_ONLY, ops, keys, values))
        expected = last_lsn + 1
    return pending
