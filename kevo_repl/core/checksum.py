"""CRC-32C (Castagnoli), the checksum of every WAL record, from the ``crc32c`` package.

Its C extension is loaded by itself: the package's ``__init__`` imports ``importlib.metadata``
for a version string, which brings email, zipfile and csv along, 6.5 MiB of an idle node's
RSS for nothing it uses. Should the package's layout change, the normal import is used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Callable
from typing import Any

__all__ = ["crc32c"]


def _load() -> Callable[..., int]:
    package = importlib.util.find_spec("crc32c")  # a top-level spec: nothing is run
    where = list(package.submodule_search_locations or []) if package else []
    spec = importlib.machinery.PathFinder.find_spec("_crc32c", where) if where else None
    if spec is None or spec.loader is None:
        from crc32c import crc32c as fallback

        return fallback
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    func: Callable[..., int] = module.crc32c
    return func


crc32c = _load()
