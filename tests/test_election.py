"""The choice of a leader among etcd records (``core/election.py``), and the records' codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kevo_repl.core.election import (
    LeaderRecord,
    MemberRecord,
    OpTime,
    Scope,
    choose_leader,
    not_yet_fresh,
)


def member(mid: str, lsn: int, timeline: int = 2, **kw: object) -> MemberRecord:
    base: dict[str, object] = {"role": "replica", "status": "ready", "promotable": True}
    return MemberRecord(id=mid, addr=f"h:{lsn}", lsn=lsn, timeline=timeline, **(base | kw))  # type: ignore[arg-type]


def scope(*members: MemberRecord, optime: OpTime | None = None, revs: int = 10) -> Scope:
    return Scope(
        revision=revs,
        members={m.id: m for m in members},
        member_revisions={m.id: revs for m in members},
        optime=optime,
    )


def test_the_most_advanced_wins_and_ties_go_to_the_lowest_id() -> None:
    best, why = choose_leader(scope(member("b", 10), member("a", 12), member("c", 12)), 100)
    assert best == "a"
    assert "less advanced than a" in why["b"] and "less advanced than a" in why["c"]


def test_a_later_history_beats_a_higher_lsn_on_an_older_one() -> None:
    best, _ = choose_leader(scope(member("old", 900, timeline=1), member("new", 500)), 10**6)
    assert best == "new"


def test_unpromotable_and_lagging_members_are_excluded_and_say_why() -> None:
    top = OpTime("gone", "h:1", lsn=1000, timeline=2)
    s = scope(
        member("copying", 2000, status="bootstrapping", promotable=False),
        member("far", 100),
        member("near", 990),
        optime=top,
    )
    best, why = choose_leader(s, max_lag=50)
    assert best == "near"
    assert "bootstrapping" in why["copying"]
    assert "900 entries behind" in why["far"]
    assert choose_leader(scope(member("far", 100), optime=top), 50)[0] is None


def test_a_record_is_fresh_once_it_names_no_leader_whenever_it_was_written() -> None:
    """n3 saw the leader gone first and wrote its fresh record at revision 11; n2's first
    read without a leader was at revision 11 too. n3 is fresh for n2 (were it judged by
    revision, each would wait for the other forever); n1 still names the old leader."""
    s = Scope(
        revision=11,
        members={
            "n1": member("n1", 5, leader="old"),
            "n2": member("n2", 9),
            "n3": member("n3", 9),
        },
        member_revisions={"n1": 4, "n2": 8, "n3": 11},
    )
    assert not_yet_fresh(s, "n2") == ["n1"]
    assert not_yet_fresh(s, "n1") == []


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_the_winner_is_never_behind_an_eligible_member(
    rows: list[tuple[int, int, bool]],
) -> None:
    ms = [member(f"m{i}", lsn, timeline=t, promotable=p) for i, (t, lsn, p) in enumerate(rows)]
    best, _ = choose_leader(scope(*ms), 10**9)
    eligible = [m for m in ms if m.promotable]
    if not eligible:
        assert best is None
        return
    winner = next(m for m in ms if m.id == best)
    assert all((winner.timeline, winner.lsn) >= (m.timeline, m.lsn) for m in eligible)


def test_records_round_trip_and_garbage_is_a_clear_error() -> None:
    m = member("a", 7, updated_ms=5)
    assert MemberRecord.loads(m.dumps()) == m
    assert m.same_position(
        MemberRecord.loads(m.dumps().replace('"updated_ms": 5', '"updated_ms": 9'))
    )
    leader = LeaderRecord("a", "h:1", 3)
    assert LeaderRecord.loads(leader.dumps()) == leader
    with pytest.raises(ValueError, match="unreadable LeaderRecord"):
        LeaderRecord.loads("{not json")
    with pytest.raises(ValueError, match="unreadable MemberRecord"):
        MemberRecord.loads('{"addr": "x"}')
