"""``kevo-repl tail`` against real nodes: every LSN exactly once, in order, under writes; where
it starts (``--from-lsn -N``, ``--from-time``) and ends (``--until-lsn``)."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

from kevo_repl.client import Client, batch_request
from kevo_repl.tail_start import parse_time
from tests.cli_support import Spawned, kevo
from tests.nodes import Cluster, Node, wait_for

Entries = list[tuple[bytes, bytes | None]]


def make_batches(count: int, seed: int, prefix: str) -> list[Entries]:
    """Batches of 1-20 entries, some deletes, so batch boundaries fall everywhere."""
    rng = random.Random(seed)
    out: list[Entries] = []
    for b in range(count):
        entries: Entries = []
        for i in range(rng.randint(1, 20)):
            key = f"{prefix}{b:04d}-{i:02d}".encode()
            entries.append(
                (key, None) if rng.random() < 0.1 else (key, b"v%d" % rng.randrange(1000))
            )
        out.append(entries)
    return out


def write(node: Node, batches: list[Entries], window: int = 8) -> None:
    with Client(node.address, timeout_ms=10_000) as c:
        for r in c.call_many([batch_request(b) for b in batches], window=window):
            assert r.WhichOneof("body") == "write", r


def expected_json(batches: list[Entries]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for b in batches:
        for key, value in b:
            op = "delete" if value is None else "put"
            out.append(
                {"op": op, "key": key.decode(), "value": None if value is None else value.decode()}
            )
    for lsn, doc in enumerate(out, start=1):
        doc["lsn"] = lsn
    return out


def run_tail_under_writes(
    target: Node, writer_node: Node, batches: list[Entries], before: int
) -> tuple[list[dict[str, object]], dict[str, int]]:
    """Write ``before`` batches, start ``tail --from-lsn 1``, write the rest meanwhile.

    The rest goes in chunks once the tail has printed its first entry: every other chunk
    waits until the tail has shown all that was written (so the next one must come live),
    the others race the tail. Returns the printed entries and the tail's own stats.
    """
    total = sum(len(b) for b in batches)
    write(writer_node, batches[:before])
    tail = Spawned.start(
        "--log-level", "debug", "tail", "--node", target.address, "--from-lsn", "1",
        "--count", str(total), "--format", "json",
    )  # fmt: skip
    errors: list[BaseException] = []

    def rest() -> None:
        try:
            tail.wait_lines(1)
            written = sum(len(b) for b in batches[:before])
            for n, i in enumerate(range(before, len(batches), 20)):
                chunk = batches[i : i + 20]
                write(writer_node, chunk)
                written += sum(len(b) for b in chunk)
                if n % 2:
                    tail.wait_lines(written)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=rest)
    writer.start()
    try:
        code = tail.wait(timeout=60)
    finally:
        writer.join(60)
        tail.kill()
    assert not errors, errors
    assert code == 0, tail.output()[-2000:]
    docs = [json.loads(line) for line in tail.lines]
    entries = [d for d in docs if "lsn" in d and "event" not in d]
    (stats,) = [d for d in docs if d.get("event") == "tail_done"]
    return entries, stats


def check_exactly_once(got: list[dict[str, object]], batches: list[Entries]) -> None:
    want = expected_json(batches)
    lsns = [d["lsn"] for d in got]
    assert lsns == list(range(1, len(want) + 1)), _first_difference(lsns)
    assert got == want


def _first_difference(lsns: list[object]) -> str:
    for i, lsn in enumerate(lsns, start=1):
        if lsn != i:
            return f"position {i} holds LSN {lsn}"
    return "lengths differ"


def write_until_printed(primary: Node, tail: Spawned, lines: int) -> None:
    """Write ``new`` until the tail has printed ``lines`` lines: it has joined once its
    start-up calls are done, and writes before that are "old"."""
    with primary.client() as c:

        def printed() -> bool:
            c.put(b"new", b"x")
            return len(tail.lines) >= lines

        wait_for(f"tail prints {lines} new entries", printed, timeout_s=20)


def test_tail_from_lsn_1_under_concurrent_writes_prints_every_lsn_once(cluster: Cluster) -> None:
    primary = cluster.primary()
    batches = make_batches(400, seed=1, prefix="t")
    got, stats = run_tail_under_writes(primary, primary, batches, before=100)
    check_exactly_once(got, batches)
    assert stats["synced_records"] > 0 and stats["live_records"] > 0, stats


def test_tail_repairs_a_lossy_stream(cluster: Cluster) -> None:
    # A PUB pipe of one message drops most of a burst: every gap goes back to WalSync.
    primary = cluster.primary("primary", "--pub-hwm", "1", "--fsync", "none")
    batches = make_batches(600, seed=2, prefix="h")
    got, stats = run_tail_under_writes(primary, primary, batches, before=50)
    check_exactly_once(got, batches)
    assert stats["gaps"] > 0 and stats["syncs"] > 1, stats


def test_tail_against_a_replica(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    batches = make_batches(300, seed=3, prefix="r")
    got, stats = run_tail_under_writes(replica, primary, batches, before=100)
    check_exactly_once(got, batches)
    # History came from the primary (a replica serves no WalSync), the rest live.
    assert stats["synced_records"] > 0 and stats["live_records"] > 0, stats


def test_tail_starts_inside_a_batch_and_shows_raw_bytes(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        c.batch([(f"b{i}".encode(), b"x") for i in range(10)])  # LSNs 1..10
        c.batch([(b"\xff\xfekey", b"\x00\x9fval"), (b"b3", None)])  # 11, 12
    r = kevo(
        "tail", "--node", primary.address, "--from-lsn", "5", "--count", "8", "--format", "json"
    )
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["lsn"] for d in docs] == list(range(5, 13))
    assert docs[0] == {"lsn": 5, "op": "put", "key": "b4", "value": "x"}
    assert docs[6] == {
        "lsn": 11,
        "op": "put",
        "key_b64": base64.b64encode(b"\xff\xfekey").decode(),
        "value_b64": base64.b64encode(b"\x00\x9fval").decode(),
    }
    assert docs[7] == {"lsn": 12, "op": "delete", "key": "b3", "value": None}
    text = kevo("tail", "--node", primary.address, "--from-lsn", "10", "--count", "3")
    assert text.stdout.splitlines() == [
        "10\tput\tb9\tx",
        "11\tput\t\\xff\\xfekey\t\\x00\\x9fval",
        "12\tdelete\tb3",
    ]


def test_tail_without_from_lsn_shows_only_new_writes(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        c.put(b"old", b"1")
    tail = Spawned.start("tail", "--node", primary.address, "--count", "2", stderr_to_stdout=False)
    try:
        write_until_printed(primary, tail, 2)
        assert tail.wait() == 0
    finally:
        tail.kill()
    lsns = [int(line.split("\t")[0]) for line in tail.lines]
    assert lsns[0] >= 2 and lsns[1] == lsns[0] + 1
    assert all("\tnew\t" in line for line in tail.lines)


def test_tail_of_a_retained_away_lsn_says_so(cluster: Cluster) -> None:
    primary = cluster.primary(
        "primary", "--retention-bytes", "150000", "--segment-bytes", "65536", "--fsync", "none"
    )
    value = b"z" * 1000
    with primary.client() as c:
        for i in range(40):
            c.batch([(f"k{i}-{j}".encode(), value) for j in range(10)])

        def retained_from() -> int:
            return (
                c.status_message().retained_from_lsn
                if c.status_message().retained_from_lsn > 1
                else 0
            )

        first = wait_for("WAL retention to drop segment 1", retained_from, timeout_s=10)
    r = kevo("tail", "--node", primary.address, "--from-lsn", "1", "--count", "1")
    assert r.returncode == 1
    assert f"LSN 1 was retained away on {primary.address}" in r.stderr
    assert f"its WAL starts at LSN {first}" in r.stderr
    ok = kevo("tail", "--node", primary.address, "--from-lsn", str(first), "--count", "1")
    assert ok.returncode == 0 and ok.stdout.startswith(f"{first}\tput\t"), ok.stderr


# ---- where a tail starts and ends: --from-lsn -N, --from-time, --until-lsn ------------------


def lsns_of(stdout: str) -> list[int]:
    return [int(line.split("\t")[0]) for line in stdout.splitlines()]


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("kevo-repl: ")]


def fill(node: Node, sizes: list[int], prefix: str, value: bytes = b"x") -> tuple[int, int]:
    """One batch per size (so batch edges fall inside any range); ``(first, last)`` LSN."""
    with node.client() as c:
        results = [
            c.batch([(f"{prefix}{b}-{i}".encode(), value) for i in range(n)])
            for b, n in enumerate(sizes)
        ]
    return results[0].first_lsn, results[-1].lsn


def iso(time_us: int, offset_minutes: int | None = 0) -> str:
    """``time_us`` as ISO 8601: ``Z`` (0), a +HH:MM offset, or naive (None: read as UTC)."""
    tz = timezone(timedelta(minutes=offset_minutes or 0))
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    text = when.astimezone(tz).isoformat()
    if offset_minutes is None:
        return text.removesuffix("+00:00")
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


def test_tail_of_the_last_n_entries_smaller_and_larger_than_the_wal(cluster: Cluster) -> None:
    primary = cluster.primary()
    _, last = fill(primary, [10, 7, 13], "n")  # LSNs 1..30, batches 1-10, 11-17, 18-30
    assert last == 30
    r = kevo("tail", "--node", primary.address, "--from-lsn", "-15", "--until-lsn", "30")
    assert r.returncode == 0, r.stderr
    assert lsns_of(r.stdout) == list(range(16, 31))  # starts inside the 11-17 batch
    assert notes(r.stderr) == []
    r = kevo("tail", "--node", primary.address, "--from-lsn=-1", "--until-lsn", "30")
    assert lsns_of(r.stdout) == [30] and r.returncode == 0
    r = kevo("tail", "--node", primary.address, "--from-lsn", "-500", "--until-lsn", "30")
    assert r.returncode == 0, r.stderr
    assert lsns_of(r.stdout) == list(range(1, 31))
    assert notes(r.stderr) == [
        f"kevo-repl: --from-lsn -500: {primary.address} retains only LSN 1..30 (30 entries); "
        "starting at LSN 1"
    ]


def test_tail_of_more_entries_than_retention_kept_starts_at_the_first_retained(
    cluster: Cluster,
) -> None:
    primary = cluster.primary(
        "primary", "--retention-bytes", "150000", "--segment-bytes", "65536", "--fsync", "none"
    )
    _, last = fill(primary, [10] * 40, "k", value=b"z" * 1000)
    with primary.client() as c:

        def retained_from() -> int:
            return (
                c.status_message().retained_from_lsn
                if c.status_message().retained_from_lsn > 1
                else 0
            )

        first = wait_for("WAL retention to drop segment 1", retained_from, timeout_s=10)
    r = kevo("tail", "--node", primary.address, "--from-lsn", "-400", "--until-lsn", str(last))
    assert r.returncode == 0, r.stderr
    assert lsns_of(r.stdout) == list(range(first, last + 1))
    assert notes(r.stderr) == [
        f"kevo-repl: --from-lsn -400: {primary.address} retains only LSN {first}..{last} "
        f"({last - first + 1} entries); starting at LSN {first}"
    ]


def test_tail_from_a_time_between_two_bursts_starts_at_the_second(cluster: Cluster) -> None:
    # Small segments: the node's binary search has several to choose from.
    primary = cluster.primary("primary", "--segment-bytes", "65536", "--fsync", "none")
    _, a_last = fill(primary, [5] * 40, "a", value=b"a" * 1000)  # burst A: ~200 KB
    between = time.time_ns() // 1000 + 1  # after every commit of A
    wait_for("the clock to pass the recorded time", lambda: time.time_ns() // 1000 > between)
    b_first, b_last = fill(primary, [3] * 30, "b", value=b"b" * 1000)  # burst B
    assert b_first == a_last + 1
    for written in (iso(between), iso(between, 330), iso(between, -480), iso(between, None)):
        r = kevo(
            "tail", "--node", primary.address, "--from-time", written,
            "--until-lsn", str(b_last), "--format", "json",
        )  # fmt: skip
        assert r.returncode == 0, (written, r.stderr)
        docs = [json.loads(line) for line in r.stdout.splitlines()]
        assert [d["lsn"] for d in docs] == list(range(b_first, b_last + 1)), written
        assert docs[0]["key"] == "b0-0" and notes(r.stderr) == []
    # Ending inside burst B, on an LSN in the middle of a batch.
    r = kevo(
        "tail", "--node", primary.address, "--from-time", iso(between),
        "--until-lsn", str(b_first + 4),
    )  # fmt: skip
    assert lsns_of(r.stdout) == list(range(b_first, b_first + 5)) and r.returncode == 0


def test_tail_from_a_time_before_the_wal_or_after_the_last_commit(cluster: Cluster) -> None:
    primary = cluster.primary()
    _, last = fill(primary, [4, 4], "e")
    r = kevo(
        "tail", "--node", primary.address, "--from-time", "2001-02-03T04:05:06Z",
        "--until-lsn", "3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert lsns_of(r.stdout) == [1, 2, 3]
    (note,) = notes(r.stderr)
    assert note.startswith(
        f"kevo-repl: --from-time 2001-02-03T04:05:06Z is before the oldest entry "
        f"{primary.address} retains (LSN 1, committed "
    ), note
    # After the last commit: new entries only.
    after = iso(time.time_ns() // 1000 + 1)
    wait_for("the clock to pass it", lambda: time.time_ns() // 1000 > parse_time(after))
    tail = Spawned.start(
        "tail", "--node", primary.address, "--from-time", after, "--count", "2",
        stderr_to_stdout=False,
    )  # fmt: skip
    try:
        write_until_printed(primary, tail, 2)
        assert tail.wait() == 0
    finally:
        tail.kill()
    lsns = lsns_of("\n".join(tail.lines))
    assert lsns[0] > last and lsns[1] == lsns[0] + 1
    assert all("\tnew\t" in line for line in tail.lines)


def test_tail_until_lsn_stops_exactly_there(cluster: Cluster) -> None:
    primary = cluster.primary()
    _, last = fill(primary, [10, 10], "u")  # 1-10, 11-20
    for start, until in ((5, 15), (7, 7), (11, 20)):
        r = kevo(
            "tail", "--node", primary.address, "--from-lsn", str(start),
            "--until-lsn", str(until), "--count", "1000",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert lsns_of(r.stdout) == list(range(start, until + 1))
    # --count still ends it first when it comes first
    r = kevo(
        "tail", "--node", primary.address, "--from-lsn", "3", "--until-lsn", "9", "--count", "2"
    )
    assert lsns_of(r.stdout) == [3, 4]
    # An --until-lsn not written yet: history, then live entries up to it, then exit 0.
    tail = Spawned.start(
        "tail", "--node", primary.address, "--from-lsn", "-2", "--until-lsn", str(last + 3),
        stderr_to_stdout=False,
    )  # fmt: skip
    try:
        tail.wait_lines(2)
        with primary.client() as c:
            for i in range(5):  # LSNs 21..25: the tail ends after 23
                c.put(f"late{i}".encode(), b"y")
        assert tail.wait() == 0
    finally:
        tail.kill()
    assert lsns_of("\n".join(tail.lines)) == [19, 20, 21, 22, 23]


def test_tail_start_and_end_misuse_exits_2_with_a_reason(cluster: Cluster) -> None:
    primary = cluster.primary()
    fill(primary, [10, 10], "m")  # LSNs 1..20
    node = ("--node", primary.address)
    cases = [
        (("--from-lsn", "5", "--until-lsn", "3"), "--until-lsn 3 is below --from-lsn 5"),
        (
            ("--from-lsn", "-2", "--until-lsn", "3"),
            "--until-lsn 3 is below where the tail starts: LSN 19 (--from-lsn -2, the last 2",
        ),
        (("--until-lsn", "20"), "--until-lsn 20 is below where the tail starts: LSN 21 ("),
        (
            ("--from-time", "2001-01-01T00:00:00Z", "--from-lsn", "3"),
            "argument --from-lsn: not allowed with argument --from-time",
        ),
        (
            ("--from-time", "yesterday"),
            "argument --from-time: expected a time in ISO 8601, e.g. 2026-12-02T10:00:00Z or "
            "2026-12-02T11:00:00+01:00; got 'yesterday'",
        ),
        (("--from-time", "2026-13-02T10:00:00Z"), "expected a time in ISO 8601"),
        (("--from-lsn", "0"), "argument --from-lsn: expected an LSN (1 or more) or -N"),
        (("--from-lsn", "abc"), "argument --from-lsn: expected an integer, got 'abc'"),
        (("--until-lsn", "0"), "argument --until-lsn: must be 1 or more, got 0"),
    ]
    for args, message in cases:
        r = kevo("tail", *node, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("usage: kevo-repl tail") and r.stdout == "", args
    help_text = kevo("tail", "--help").stdout
    for words in ("-N: the last N entries", "without an offset is UTC", "--until-lsn L"):
        assert words in " ".join(help_text.split()), words


def test_tail_of_a_replica_from_the_last_n_and_from_a_time(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    _, a_last = fill(primary, [6, 6], "ra")
    between = time.time_ns() // 1000 + 1
    wait_for("the clock to pass the recorded time", lambda: time.time_ns() // 1000 > between)
    b_first, b_last = fill(primary, [5, 5], "rb")
    with replica.client() as c:
        wait_for("the replica to apply burst B", lambda: c.status_message().lsn == b_last)
    r = kevo("tail", "--node", replica.address, "--from-lsn", "-7", "--until-lsn", str(b_last))
    assert r.returncode == 0, r.stderr
    assert lsns_of(r.stdout) == list(range(b_last - 6, b_last + 1))
    r = kevo(
        "tail", "--node", replica.address, "--from-time", iso(between),
        "--until-lsn", str(b_last),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert lsns_of(r.stdout) == list(range(b_first, b_last + 1)) and b_first == a_last + 1
