"""The failover soak itself runs (a few faults of every kind), so it cannot rot unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak_failover import KINDS, markdown, soak_failover
from tests.faults.ha_group import require_etcd
from tests.faults.system import skip_reason


def agent_events(logs: Path) -> str:
    """What the members' agents and role changes logged, in time order (for a failure)."""
    rows: list[str] = []
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"role": "agent"' in line or '"promoted"' in line or '"repointed"' in line:
                rows.append(line[:400])
    return "\n" + "\n".join(sorted(rows, key=lambda r: r[r.find('"timestamp"') :]))


@pytest.mark.timeout(300)
def test_a_short_failover_soak_holds_every_invariant(tmp_path: Path) -> None:
    if (why := skip_reason()) is not None:
        pytest.skip(why)
    require_etcd()
    report = soak_failover(len(KINDS), seed=5, kinds=KINDS, keep_logs=tmp_path / "logs")
    assert report["ok"], markdown(report) + agent_events(tmp_path / "logs")
    assert report["faults_injected"] == len(KINDS)
    assert sum(report["bootstraps"].values()) == 0
