"""Fault profiles: which faults a seed injects, and every tunable drawn from its rng.

The profile is ``PROFILES[seed % len(PROFILES)]`` so any contiguous range of seeds mixes all
of them evenly; the rest (replica count, latencies, loss rates, timers, retention sizes,
disk speeds, timeline) comes from the seed's ``random.Random``, the run's only source of
randomness. Every node is a ``SimNode``; the profile decides its ``NodeParams``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kevo_repl.core.follower_types import FollowerConfig
from kevo_repl.testing.mesh import MeshParams
from kevo_repl.testing.sim_node import NodeParams
from kevo_repl.testing.sim_serving import ServingParams

__all__ = ["PROFILES", "Profile", "Setup", "make_setup"]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    pub_drop_max: float = 0.02
    reply_drop: float = 0.0  # ROUTER HWM drops: lost replies and torn bootstrap streams
    slow_join_max_ms: int = 0
    partitions: bool = False
    pauses: bool = False  # SIGSTOP of a replica (and of the primary when it can crash)
    replica_crashes: bool = False
    primary_crashes: bool = False
    reinit: bool = False  # the primary's data directory is wiped once: a new history
    disk_fail_rate: float = 0.0  # per apply
    boot_fail_rate: float = 0.0  # per bootstrap chunk write and install
    slow_disks: bool = False  # a replica's fdatasync may stall for seconds (its WAL lags)
    foreign_replica: float = 0.0  # chance that one replica starts with another history's data
    late_joiner: bool = False
    tight_retention: bool = False  # small WAL: long outages force bootstraps
    fault_mean_ms: int = 700


PROFILES: tuple[Profile, ...] = (
    Profile("calm"),
    Profile("lossy", pub_drop_max=0.3, reply_drop=0.02, slow_join_max_ms=300),
    Profile("partitions", pub_drop_max=0.05, slow_join_max_ms=200, partitions=True, pauses=True),
    Profile(
        "crashes",
        pub_drop_max=0.05,
        replica_crashes=True,
        disk_fail_rate=0.01,
        boot_fail_rate=0.25,
        slow_disks=True,
        foreign_replica=0.5,
    ),
    Profile(
        "primary",
        pub_drop_max=0.05,
        primary_crashes=True,
        partitions=True,
        pauses=True,
        fault_mean_ms=1000,
    ),
    Profile(
        "retention",
        pub_drop_max=0.1,
        partitions=True,
        replica_crashes=True,
        late_joiner=True,
        tight_retention=True,
    ),
    Profile(
        "chaos",
        pub_drop_max=0.2,
        reply_drop=0.01,
        slow_join_max_ms=200,
        partitions=True,
        pauses=True,
        replica_crashes=True,
        primary_crashes=True,
        reinit=True,
        disk_fail_rate=0.02,
        boot_fail_rate=0.25,
        slow_disks=True,
        foreign_replica=0.5,
        late_joiner=True,
        tight_retention=True,
        fault_mean_ms=500,
    ),
)


@dataclass(slots=True)
class Setup:
    """Everything one seed's run is made of, drawn once up front."""

    profile: Profile
    replicas: int
    net: MeshParams
    primary: NodeParams
    nodes: list[NodeParams]  # one per replica, its FollowerConfig included
    keyspace: int
    write_mean_ms: int
    wait_chance: float
    heal_ms: int
    deadline_ms: int
    start_ms: list[int] = field(default_factory=list)  # late joiners start empty, later
    foreign: int | None = None  # this replica starts with another history's data
    foreign_batches: int = 0
    reinit_chance: float = 0.0


def make_setup(seed: int, rng: random.Random) -> Setup:
    p = PROFILES[seed % len(PROFILES)]
    n = rng.randint(2, 4)
    net = MeshParams(
        max_latency_ms=rng.randint(2, 30),
        pub_drop=rng.uniform(0.0, p.pub_drop_max),
        reply_drop=p.reply_drop,
        slow_join_max_ms=p.slow_join_max_ms,
    )
    if p.tight_retention:
        keep, cap = rng.randint(20, 100), rng.randint(80, 300)
    else:
        keep, cap = rng.choice([10**6, rng.randint(100, 300)]), 10**6
    primary = NodeParams(
        timers_ms=rng.randint(100, 300),  # the beacon
        group_commit_ms=rng.randint(0, 5),
        keep_entries=keep,
        cap_entries=cap,
        segment_entries=rng.randint(4, 32),
        serving=ServingParams(
            wal_sync_max_count=rng.randint(8, 64),
            chunk_keys=0,
            wal_sync_needs_registration=rng.random() < 0.5,
        ),
    )
    keyspace = rng.randint(4, 48)
    foreign = rng.randrange(n) if rng.random() < p.foreign_replica else None
    nodes = [
        NodeParams(
            tick_ms=rng.randint(10, 50),
            timers_ms=rng.randint(100, 1500),  # the store's checkpoint
            sync_ms=rng.choice([300, 1000, 2000] if p.slow_disks else [1, 5, 40]),
            fail_rate=p.disk_fail_rate,
            boot_fail_rate=p.boot_fail_rate,
            config=FollowerConfig(
                replica_id=f"r{i}",
                address=f"10.0.0.{i + 1}:7000",
                heartbeat_interval_ms=100,
                primary_timeout_ms=rng.randint(700, 1000),
                request_timeout_ms=rng.randint(300, 600),
                backoff_initial_ms=50,
                backoff_max_ms=rng.randint(400, 1600),
                wal_sync_max_bytes=rng.randint(800, 6000),
                bootstrap_credit=rng.randint(1, 8),
                bootstrap_chunk_bytes=rng.randint(10, 300),
                allow_bootstrap=not (i == foreign and rng.random() < 0.3),
                # even replicas run with --reinit; the others must refuse an unrelated primary
                allow_unrelated_history=i % 2 == 0,
            ),
        )
        for i in range(n)
    ]
    heal = rng.randint(4000, 8000)
    late = rng.randrange(n) if p.late_joiner and rng.random() < 0.7 else None
    # half the foreign replicas join late, below the primary's LSN and inside its WAL: there
    # only the history check stands between them and applying onto another history's data
    foreign_late = foreign if rng.random() < 0.5 else None
    starts = [rng.randint(500, heal // 2) if i in (late, foreign_late) else 0 for i in range(n)]
    return Setup(
        profile=p,
        replicas=n,
        net=net,
        primary=primary,
        nodes=nodes,
        keyspace=keyspace,
        write_mean_ms=rng.randint(5, 40),
        wait_chance=rng.choice([0.0, 0.1, 0.3]),
        heal_ms=heal,
        deadline_ms=heal + 12_000,
        start_ms=starts,
        foreign=foreign,
        foreign_batches=rng.randint(1, 40),
        reinit_chance=0.5 if p.reinit else 0.0,
    )
