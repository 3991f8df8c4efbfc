"""The deterministic simulation: many seeds pass, a seed replays, and the checkers bite.

Each seed is a short simulated run (a few virtual seconds of writes under faults, then
healing and convergence) over the real ``Follower`` and ``Registry``. A failure message is
the replay command: ``python -m kevo_repl.testing.sim --seed N``.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

from kevo_repl.core.follower import Follower
from kevo_repl.core.follower_types import Action, Status
from kevo_repl.core.registry import Registry
from kevo_repl.testing.broken import BROKEN_RULES
from kevo_repl.testing.profiles import PROFILES
from kevo_repl.testing.sim import SimResult, main, run_seed

SEEDS = range(250)
BROKEN_SEEDS = range(40)


@functools.cache
def result(seed: int) -> SimResult:
    return run_seed(seed)


def first_failure(seeds: range) -> SimResult | None:
    for seed in seeds:
        r = run_seed(seed)
        if not r.ok:
            return r
    return None


@pytest.mark.parametrize("seed", SEEDS)
def test_seed(seed: int) -> None:
    r = result(seed)
    assert r.ok, r.report()


def test_the_seed_range_mixes_every_fault_and_both_repair_paths() -> None:
    results = [result(s) for s in SEEDS]
    assert {r.kind for r in results} == {p.name for p in PROFILES}
    total = {k: sum(r.stats[k] for r in results) for k in results[0].stats}
    faults = ("partition", "crash", "pause", "primary_crash", "primary_pause", "reinit")
    for kind in (*faults, "storage_errors"):
        assert total[kind] > 0, kind
    assert total["wal_syncs_served"] > 0 and total["bootstraps"] > 0 and total["too_old"] > 0
    assert total["pub_lost"] > 0 and total["req_lost"] > 0 and total["rep_lost"] > 0
    # seeds where retention never passed a replica exist, and bootstrapped nobody
    untouched = [r for r in results if not r.stats["retention_passed"]]
    assert untouched and all(r.stats["bootstraps"] == 0 for r in untouched)


def test_a_seed_replays_exactly() -> None:
    a, b = run_seed(6), run_seed(6)
    assert a.trace == b.trace and a.stats == b.stats


@pytest.mark.parametrize("rule", sorted(BROKEN_RULES))
def test_checkers_catch_a_broken_follower(rule: str) -> None:
    caught = None
    for seed in BROKEN_SEEDS:
        r = run_seed(seed, broken=rule)
        if not r.ok:
            caught = r
            break
    assert caught is not None, f"{rule} survived seeds {BROKEN_SEEDS}"
    assert f"--seed {caught.seed} --broken {rule}" in caught.report()


# ---- the core bugs this simulator found stay found --------------------------------------


def _floor_at_applied(self: Registry) -> int | None:
    needs = [(r.bootstrap_snapshot_lsn or r.applied_lsn) + 1 for r in self.replicas()]
    return min(needs) if needs else None


def _count_any_live(self: Registry, lsn: int) -> int:
    bad = (Status.DISCONNECTED, Status.ERROR)
    return sum(1 for r in self.replicas() if r.applied_lsn >= lsn and r.status not in bad)


_storage_failed = Follower.storage_failed


def _rewind_lsn_only(
    self: Follower, message: str, lsn: int, retry_ms: int, history: bytes | None = None
) -> list[Action]:
    return _storage_failed(self, message, lsn, retry_ms)


def _keep_snapshot_durable(
    self: Follower, message: str, lsn: int, retry_ms: int, history: bytes | None = None
) -> list[Action]:
    durable = self.durable_lsn
    out = _storage_failed(self, message, lsn, retry_ms, history)
    self.durable_lsn = min(durable, lsn)
    return out


@pytest.mark.parametrize(
    ("cls", "name", "old", "invariant"),
    [
        (Registry, "retention_floor", _floor_at_applied, "retention"),
        (Registry, "replicas_applied", _count_any_live, "wait"),
        (Follower, "storage_failed", _rewind_lsn_only, "agreement"),
        (Follower, "storage_failed", _keep_snapshot_durable, "agreement"),
    ],
    ids=[
        "retention-floor-at-applied",
        "bootstrapping-replicas-counted",
        "failed-install-keeps-new-history",
        "failed-install-keeps-snapshot-durable",
    ],
)
def test_the_original_core_bugs_are_caught(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, old: object, invariant: str
) -> None:
    monkeypatch.setattr(cls, name, old)
    caught = first_failure(range(120))
    assert caught is not None and caught.violation is not None
    assert caught.violation.invariant == invariant, caught.report()


# ---- the command line -----------------------------------------------------------------------


def test_cli_replays_one_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("ok seed=3 ")


def test_cli_prints_the_replay_command_of_a_failing_seed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--seeds", "5:8", "--broken", "apply_twice", "--trace", "4"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL seed=5 ")
    assert lines[0].endswith(
        "replay: python -m kevo_repl.testing.sim --seed 5 --broken apply_twice"
    )
    assert "inv2" in lines[0] and len(lines) >= 5 and lines[1].startswith("    t=")


def test_module_entry_point() -> None:
    cmd = [sys.executable, "-m", "kevo_repl.testing.sim", "--seed", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok seed=1 ")
