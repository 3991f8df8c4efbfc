"""Deterministic simulation of the replication protocol, run against the real core.

Two worlds on one kind of node: ``sim`` (one primary and its replicas under faults, and
the CLI of both: ``python -m kevo_repl.testing.sim [--failover] --seed N``) and
``sim_failover`` (promotion, repoint, switchover, rejoin). Their nodes are ``sim_node``
(with ``sim_node_disk``, ``sim_serving``, ``sim_driver``) on a ``mesh``, in ``scheduler``
virtual time; ``profiles`` draws the single-primary world's faults, ``sim_watch`` and
``checkers`` hold the invariants, ``broken`` / ``broken_failover`` the mutants they must
catch.
"""
