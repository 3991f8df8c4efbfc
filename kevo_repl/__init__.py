"""kevo-repl: WAL replication for a key-value store over ZeroMQ.

``kevo_repl.Client`` is imported lazily, so importing a pure submodule (``kevo_repl.core``)
does not pull in ZeroMQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kevo_repl.adapters.security import ClientCurve
    from kevo_repl.client import Client
    from kevo_repl.node_status import FollowerStatus, NodeStatus

__all__ = ["Client", "ClientCurve", "FollowerStatus", "NodeStatus", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Client":
        from kevo_repl.client import Client

        return Client
    if name == "ClientCurve":  # CURVE options for Client(curve=...), without adapters imports
        from kevo_repl.adapters.security import ClientCurve

        return ClientCurve
    if name in ("NodeStatus", "FollowerStatus"):  # what Client.status() returns
        from kevo_repl import node_status

        return getattr(node_status, name)
    raise AttributeError(f"module 'kevo_repl' has no attribute {name!r}")
