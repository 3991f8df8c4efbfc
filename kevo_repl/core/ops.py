"""Entry operation codes shared by the WAL payload, the wire and the state store.

The numbers are the protobuf enum ``kevo_repl.v1.Op`` (proto/kevo_repl/v1/replication.proto),
so a decoded ``WalBatch.ops`` column is applied as-is, without translating each entry. Kept
here as plain ints so the pure core and the storage adapter need not import protobuf.
"""

from __future__ import annotations

from typing import Final

__all__ = ["KNOWN_OPS", "OP_DELETE", "OP_PUT"]

OP_PUT: Final = 1
OP_DELETE: Final = 2
KNOWN_OPS: Final = frozenset({OP_PUT, OP_DELETE})
