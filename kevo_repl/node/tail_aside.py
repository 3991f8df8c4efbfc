"""A replica's tail past the point where its line and its upstream's part, set aside.

The records are kept in ``DIR/discarded/`` (an operator may recover writes a failover lost
from them) with a JSON summary, and never served again; the keys they touched are what a
rewind fetches the current values of.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kevo_repl.core.errors import KevoError
from kevo_repl.core.follower_types import DiscardTail
from kevo_repl.core.record import decode_record, peek_lsns
from kevo_repl.wire.batch import decode_batch

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["set_aside_tail"]


def set_aside_tail(node: Node, action: DiscardTail) -> list[bytes] | None:
    """Keep our records past ``after_lsn`` in a file (an operator may recover writes a
    failover lost from it) and serve nothing of them; return the keys they touched
    (None when the WAL no longer holds the whole tail: a rewind is impossible)."""
    after_lsn, applied_lsn = action.after_lsn, action.applied_lsn
    records: list[bytes] = []
    keys: list[bytes] | None = []
    try:
        for record in node.wal.read_from(after_lsn + 1):
            first, last = peek_lsns(record)
            if last <= after_lsn:
                continue
            if first <= after_lsn:
                keys = None  # a record straddles the point of divergence
            records.append(record)
            if keys is not None:
                keys += decode_batch(decode_record(record).payload).keys
    except KevoError:
        keys = None  # retained away or unreadable: the summary says how much was kept
    if not records or peek_lsns(records[0])[0] != after_lsn + 1:
        keys = None
    folder = node.state.data_dir / "discarded"
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = folder / f"{stamp}-lsn-{after_lsn + 1}-{applied_lsn}.records"
    Path(path).write_bytes(b"".join(records))
    summary = {
        "from_lsn": after_lsn + 1,
        "to_lsn": applied_lsn,
        "entries": applied_lsn - after_lsn,
        "records_kept": len(records),
        "keys": len(set(keys)) if keys is not None else None,
        "history_id": (node.store.history_id or b"").hex(),
    }
    path.with_suffix(".json").write_text(json.dumps(summary) + "\n")
    node.log.warning("tail_discarded", file=str(path), **summary)
    return keys
