"""History chains on the wire: ``repeated HistoryEntry`` <-> ``core.history.HistoryChain``."""

from __future__ import annotations

from collections.abc import Iterable

from kevo_repl.core.history import HistoryChain, HistoryError
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError

__all__ = ["chain_from_wire", "chain_to_wire"]


def chain_from_wire(entries: Iterable[pb.HistoryEntry], history_id: bytes = b"") -> HistoryChain:
    """A peer's chain; a peer that sends none but a history id has a chain of one (a peer
    from before chains). Raises ``WireError`` for a chain that cannot be."""
    pairs = [(e.history_id, e.fork_lsn) for e in entries]
    try:
        if pairs:
            return HistoryChain.of(pairs)
        return HistoryChain.root(history_id) if history_id else HistoryChain()
    except HistoryError as exc:
        raise WireError(f"history chain: {exc}") from None


def chain_to_wire(chain: HistoryChain) -> list[pb.HistoryEntry]:
    return [pb.HistoryEntry(history_id=h, fork_lsn=f) for h, f in chain.entries]
