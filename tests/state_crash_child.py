"""Child process for the state store crash tests: writes until it is SIGKILLed.

``python state_crash_child.py apply PATH`` applies deterministic batches from the store's
``applied_lsn`` on, starting from a tiny map so that kills also land inside map growth.
``python state_crash_child.py bootstrap PATH`` repeatedly builds a bootstrap of version
``applied_lsn + 1`` and installs it. Each completed step prints its LSN on stdout. The parent
kills the process at a random moment and checks the reopened store against the functions
below, which it imports: the store must hold exactly what its ``applied_lsn`` says.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kevo_repl.adapters.state_lmdb import StateStore
from kevo_repl.core.ops import OP_DELETE, OP_PUT

H = b"crash-history-id"
BATCH = 32
TINY_MAP_BYTES = 64 * 1024


def apply_batch(n: int) -> tuple[int, int, list[int], list[bytes], list[bytes]]:
    """Batch number ``n`` (1-based): puts over a growing key space, with some deletes."""
    first = (n - 1) * BATCH + 1
    ops, keys, values = [], [], []
    for lsn in range(first, first + BATCH):
        delete = lsn % 5 == 0
        ops.append(OP_DELETE if delete else OP_PUT)
        keys.append(b"k%07d" % ((lsn * 7919) % (lsn // 2 + 50)))
        values.append(b"" if delete else b"%d:" % lsn + b"v" * 100)
    return first, first + BATCH - 1, ops, keys, values


def apply_model(lsn: int) -> dict[bytes, bytes]:
    """Expected content after batches ``1..lsn // BATCH``."""
    model: dict[bytes, bytes] = {}
    for n in range(1, lsn // BATCH + 1):
        _, _, ops, keys, values = apply_batch(n)
        for op, key, value in zip(ops, keys, values, strict=True):
            if op == OP_PUT:
                model[key] = value
            else:
                model.pop(key, None)
    return model


def bootstrap_content(version: int) -> dict[bytes, bytes]:
    """Content of bootstrap ``version``: each version differs in keys and values."""
    low = version * 37 % 300
    return {b"b%05d" % i: b"%d/%d" % (version, i) + b"w" * 200 for i in range(low, low + 400)}


def run_apply(path: Path) -> None:
    with StateStore.open(path, map_size_bytes=TINY_MAP_BYTES) as store:
        n = store.applied_lsn // BATCH + 1
        while True:
            first, last, ops, keys, values = apply_batch(n)
            store.apply(first, last, H, ops, keys, values)
            print(last, flush=True)
            n += 1


def run_bootstrap(path: Path) -> None:
    store = StateStore.open(path, map_size_bytes=TINY_MAP_BYTES)
    while True:
        version = store.applied_lsn + 1
        items = sorted(bootstrap_content(version).items())
        writer = StateStore.begin_bootstrap(path, map_size_bytes=TINY_MAP_BYTES)
        for i in range(0, len(items), 50):
            chunk = items[i : i + 50]
            writer.add([k for k, _ in chunk], [v for _, v in chunk])
        writer.finish(version, H)
        store.replace_with_bootstrap()
        print(version, flush=True)


if __name__ == "__main__":
    mode, target = sys.argv[1], Path(sys.argv[2])
    {"apply": run_apply, "bootstrap": run_bootstrap}[mode](target)
