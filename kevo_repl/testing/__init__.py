"""Deterministic simulation of the replication protocol, run against the real core.

``sim`` (runner and CLI: ``python -m kevo_repl.testing.sim --seed N``), ``scheduler``
(virtual time), ``net`` (lossy PUB, FIFO ROUTER/DEALER, partitions), ``disk`` (replica store
and primary WAL with crash semantics), ``sim_primary`` / ``sim_replica`` (the nodes),
``profiles`` (fault mixes per seed), ``checkers`` (DESIGN.md invariants), ``broken``
(mutant followers the checkers must catch).
"""
