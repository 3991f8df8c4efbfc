"""Changing a running node's role: promote, repoint, hand over, fence.

A node's role is only where its records come from (``node/node.py``), so each change swaps
the source and keeps the WAL, the store, the sockets and the followers:

* **promote**: a replica stops following, and a new history forked at its last LSN starts
  (chain saved first, then a WAL segment of the new history): its followers continue by
  WalSync, since their positions lie on the new history's line. It refuses while its
  upstream still answers (two primaries) unless forced, and mid-bootstrap or after a
  divergence (its store is then no state of the history);
* **repoint**: follow another node from the current position; a primary doing so becomes
  a replica (the last step of a switchover);
* **hand over**: a primary stops accepting writes, finishes what is in flight and says its
  last LSN, so the new primary can be promoted with nothing lost;
* **fence**: a primary that learns of a newer history descending from its own (a follower
  of it registers) stops accepting writes: another node was promoted over it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kevo_repl.adapters.clock import monotonic_ms
from kevo_repl.client import parse_node
from kevo_repl.core.follower_types import Status
from kevo_repl.core.history import HISTORY_ID_BYTES, NEVER_FOLLOWED
from kevo_repl.logs import get_logger
from kevo_repl.wire import pb
from kevo_repl.wire.batch import WireError
from kevo_repl.wire.history import chain_to_wire

if TYPE_CHECKING:
    from kevo_repl.node.node import Node

__all__ = ["fence", "handover", "promote", "repoint"]


def promote(node: Node, force: bool) -> pb.PromoteResponse:
    from kevo_repl.node.upstream_source import UpstreamSource
    from kevo_repl.node.write_source import WriteSource

    source = node.source
    if not isinstance(source, UpstreamSource):
        raise WireError("this node is a primary already")
    f = source.follower
    if not f.consistent:
        raise WireError(
            "this node is copying its upstream's data (a bootstrap, or a diverged tail being "
            "replaced): its store is no state of the history yet, so it cannot be promoted",
            pb.ERROR_UNAVAILABLE,
        )
    if not node.state.chain and not force:
        raise WireError(NEVER_FOLLOWED)
    heard = monotonic_ms() - f.last_heard_ms
    alive = f.status in (Status.SYNCING, Status.READY) and heard < node.config.primary_timeout_ms
    if alive and not force:
        raise WireError(
            f"its upstream {source.upstream} is reachable and answering (heard {heard} ms "
            f"ago, status {f.status.name.lower()}): promoting now would make two primaries. "
            "Stop that primary first, or promote with --force"
        )
    source.close()  # everything received is now in the WAL, applied and synced
    fork = node.wal.last_lsn
    history = os.urandom(HISTORY_ID_BYTES)
    chain = node.state.chain.extend(history, fork)
    node.state.save_chain(chain, started_here=True)  # before any record of it is written
    node.wal.switch_history(history)
    node.upstream = ""
    node.fenced = ""
    node.log = get_logger(node=node.config.node_id, role="primary")
    node.source = WriteSource(node)
    node.sockets_changed()
    node.log.warning(
        "promoted",
        fork_lsn=fork,
        history_id=history.hex(),
        history=chain.describe(),
        previous_upstream=source.upstream,
        forced=force and alive,
    )
    node.stream.beacon(monotonic_ms())  # followers see the new history at once
    return pb.PromoteResponse(fork_lsn=fork, history_id=history, history=chain_to_wire(chain))


def repoint(node: Node, upstream: str) -> pb.RepointResponse:
    from kevo_repl.node.upstream_source import UpstreamSource

    try:
        parse_node(upstream)
    except ValueError as exc:
        raise WireError(f"repoint: {exc}") from None
    if upstream in (node.address, f"{node.config.bind}:{node.config.port}"):
        raise WireError("repoint: a node cannot follow itself")
    previous = node.upstream
    known_primary = node.requests.primary_address()  # our line's, as we last heard it
    node.source.close()
    node.upstream = upstream
    node.fenced = ""
    node.log = get_logger(node=node.config.node_id, role="replica")
    node.source = UpstreamSource(node, upstream, known_primary)
    node.sockets_changed()
    node.log.warning("repointed", upstream=upstream, previous=previous or "(was the primary)")
    return pb.RepointResponse(previous=previous)


def handover(node: Node, to: str, cancel: bool = False) -> pb.HandoverResponse:
    from kevo_repl.node.write_source import WriteSource

    source = node.source
    if not isinstance(source, WriteSource):
        raise WireError("hand over: this node is not a primary")
    if cancel:
        node.fenced = node.fence_primary = ""
        node.log.warning("handover_cancelled", last_lsn=node.visible_lsn)
        return pb.HandoverResponse(last_lsn=node.visible_lsn)
    node.fenced = f"handing over to {to}" if to else "handing over"
    node.fence_primary = to
    source.drain()  # every write accepted so far: durable, applied, published
    node.log.warning("handing_over", to=to, last_lsn=node.visible_lsn)
    return pb.HandoverResponse(last_lsn=node.visible_lsn)


def fence(node: Node, why: str, primary: str) -> None:
    """Stop accepting writes: a newer primary exists (``primary``, if known)."""
    if node.fenced:
        return
    node.fenced = why
    node.fence_primary = primary
    node.log.error("fenced", reason=why, primary=primary or None)
