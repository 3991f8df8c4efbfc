"""History chains with fork points, and how a follower's position relates to an upstream's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kevo_repl.core.history import HistoryChain, HistoryError, Verdict, relate

H1, H2, H3, H4 = (bytes([i]) * 16 for i in (1, 2, 3, 4))
ROOT = HistoryChain.root(H1)
PROMOTED = ROOT.extend(H2, 500)  # H1 owns 1..500, H2 from 501


def test_which_history_owns_an_lsn() -> None:
    chain = PROMOTED.extend(H3, 800)
    assert [chain.at(n) for n in (1, 500, 501, 800, 801, 10**9)] == [H1, H1, H2, H2, H3, H3]
    assert chain.end_of(H1) == 500 and chain.end_of(H2) == 800 and chain.end_of(H3) is None
    assert chain.current == H3 and HistoryChain().current == b""


def test_a_promotion_below_a_fork_it_holds_nothing_of_forks_from_the_older_history() -> None:
    """Found by the failover simulation (double failover): a replica that took the new
    primary's chain (H2 from 501) while still at LSN 442 was promoted when that primary was
    lost too; extending the chain at 442 put a fork point behind H2's and failed."""
    assert PROMOTED.extend(H3, 442) == HistoryChain(((H1, 0), (H3, 442)))
    assert PROMOTED.extend(H3, 500) == HistoryChain(((H1, 0), (H3, 500)))
    assert PROMOTED.extend(H3, 501) == HistoryChain(((H1, 0), (H2, 500), (H3, 501)))


def test_malformed_chains_are_refused() -> None:
    with pytest.raises(HistoryError):
        HistoryChain(((H1, 5),))  # a root forks from nothing
    with pytest.raises(HistoryError):
        HistoryChain(((H1, 0), (H2, 500), (H3, 400)))  # fork points go forward
    with pytest.raises(HistoryError):
        PROMOTED.extend(H1, 900)  # an id appears once
    with pytest.raises(HistoryError):
        HistoryChain(((b"short", 0),))


def test_same_line_follows_or_waits() -> None:
    assert relate(ROOT, 100, ROOT, 200).verdict is Verdict.FOLLOW
    assert relate(ROOT, 300, ROOT, 200).verdict is Verdict.UPSTREAM_BEHIND
    assert relate(ROOT, 400, PROMOTED, 900).verdict is Verdict.FOLLOW  # below the fork
    assert relate(ROOT, 500, PROMOTED, 900).verdict is Verdict.FOLLOW  # at the fork
    assert relate(HistoryChain(), 0, PROMOTED, 900).verdict is Verdict.EMPTY


def test_a_tail_past_the_fork_has_diverged() -> None:
    r = relate(ROOT, 520, PROMOTED, 900)  # the old primary wrote 501..520 on H1
    assert (r.verdict, r.shared_lsn) == (Verdict.DIVERGED, 500)
    other = ROOT.extend(H3, 450)  # promoted elsewhere, earlier
    assert relate(PROMOTED, 480, other, 900).shared_lsn == 450
    assert relate(PROMOTED, 480, other, 900).verdict is Verdict.DIVERGED
    assert relate(PROMOTED, 400, other, 900).verdict is Verdict.FOLLOW


def test_an_upstream_we_moved_past_is_never_followed_back() -> None:
    r = relate(PROMOTED, 600, ROOT, 700)
    assert r.verdict is Verdict.UPSTREAM_OLDER
    assert relate(PROMOTED, 500, ROOT, 700).verdict is Verdict.UPSTREAM_OLDER


def test_chains_without_a_common_root_are_unrelated() -> None:
    assert relate(ROOT, 10, HistoryChain.root(H4), 10).verdict is Verdict.UNRELATED
    assert PROMOTED.shared_lsn(HistoryChain.root(H4)) is None


ids = st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=5, unique=True)


@given(ids, st.lists(st.integers(0, 1000), min_size=4, max_size=4), st.integers(1, 2000))
def test_shared_lsn_is_symmetric_and_owners_agree_below_it(
    hs: list[bytes], forks: list[int], lsn: int
) -> None:
    forks = sorted(forks)
    a = HistoryChain.of([(hs[0], 0), *zip(hs[1:3], forks[:2], strict=False)])
    b = HistoryChain.of([(hs[0], 0), *zip(hs[3:], forks[2:], strict=False)])
    shared = a.shared_lsn(b)
    assert shared == b.shared_lsn(a)
    assert shared is not None
    if lsn <= shared:
        assert a.at(lsn) == b.at(lsn)
