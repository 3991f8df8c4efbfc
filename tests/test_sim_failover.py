"""The failover simulation: promotion, repoint and rejoin under faults, over the real core.

Each seed runs four full nodes (own WAL, store, chain) through one operation (an unplanned
failover, a switchover, or two failovers in a row) with faults around it: the promoted node
losing power mid-promotion, the old primary back while the promotion runs, a follower
repointed twice. A failure message is the replay command.
"""

from __future__ import annotations

import functools

import pytest

from kevo_repl.testing.broken_failover import FAILOVER_RULES
from kevo_repl.testing.checkers import SimResult
from kevo_repl.testing.sim import main
from kevo_repl.testing.sim_failover import OPERATIONS, run_failover_seed

SEEDS = range(150)
BROKEN_SEEDS = range(40)


@functools.cache
def result(seed: int) -> SimResult:
    return run_failover_seed(seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_seed(seed: int) -> None:
    r = result(seed)
    assert r.ok, r.report()


def test_the_seed_range_covers_every_operation_and_fault_around_it() -> None:
    results = [result(s) for s in SEEDS]
    assert {r.kind for r in results} == set(OPERATIONS)
    total = {k: sum(r.stats[k] for r in results) for k in results[0].stats}
    for key in (
        "promotions",
        "repoints",
        "mid_promotion_crashes",
        "old_back_early",
        "repointed_twice",
        "discarded_tails",
        "rewinds_served",
        "acked_wait",
        "faults",
    ):
        assert total[key] > 0, key
    assert max(r.stats["histories"] for r in results) >= 3  # two failovers: a chain of three
    # every log covers every position: bootstraps only where a rewind's values were taken
    # on a branch a second failover then left (counted apart, each one justified)
    assert total["bootstraps"] == total["bootstraps_uncovered"]
    switchovers = [r for r in results if r.kind == "switchover" and r.stats["promotions"]]
    assert switchovers and all(r.stats["discarded_tails"] == 0 for r in switchovers)


def test_a_seed_replays_exactly() -> None:
    a, b = run_failover_seed(7), run_failover_seed(7)
    assert a.stats == b.stats and a.trace == b.trace


@pytest.mark.parametrize("rule", sorted(FAILOVER_RULES))
def test_each_broken_rule_is_caught(rule: str) -> None:
    failures = [r for s in BROKEN_SEEDS if not (r := run_failover_seed(s, rule)).ok]
    assert failures, f"{rule} ({FAILOVER_RULES[rule]}) was never caught"
    assert f"--broken {rule}" in failures[0].replay


def test_the_command_line_runs_the_failover_world(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--failover", "--seeds", "0:3"]) == 0
    assert "3 seeds, 0 failed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--failover", "--seed", "1", "--broken", "apply_twice"])  # the other world's
