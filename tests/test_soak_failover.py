"""The failover soak itself runs (a few faults of every kind), so it cannot rot unnoticed."""

from __future__ import annotations

import pytest

from bench.soak_failover import KINDS, markdown, soak_failover
from kevo_repl.ha.local_etcd import ETCD_MISSING, etcd_binary
from tests.faults.system import skip_reason


@pytest.mark.timeout(300)
def test_a_short_failover_soak_holds_every_invariant() -> None:
    if (why := skip_reason()) is not None:
        pytest.skip(why)
    if etcd_binary() is None:
        pytest.fail(ETCD_MISSING)
    report = soak_failover(len(KINDS), seed=5, kinds=KINDS)
    assert report["ok"], markdown(report)
    assert report["faults_injected"] == len(KINDS)
    assert sum(report["bootstraps"].values()) == 0
