"""``kevo-repl tail`` against real nodes: every LSN exactly once, in order, under writes."""

from __future__ import annotations

import base64
import json
import random
import threading

from kevo_repl.client import Client, batch_request
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
        with primary.client() as c:

            def wrote_after_tail_joined() -> bool:
                # The tail has joined once its status call is done; writes before that
                # are "old". Keep writing until two arrive.
                c.put(b"new", b"x")
                return len(tail.lines) >= 2

            wait_for("tail prints two new entries", wrote_after_tail_joined, timeout_s=20)
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
            return c.status().retained_from_lsn if c.status().retained_from_lsn > 1 else 0

        first = wait_for("WAL retention to drop segment 1", retained_from, timeout_s=10)
    r = kevo("tail", "--node", primary.address, "--from-lsn", "1", "--count", "1")
    assert r.returncode == 1
    assert f"LSN 1 was retained away on {primary.address}" in r.stderr
    assert f"its WAL starts at LSN {first}" in r.stderr
    ok = kevo("tail", "--node", primary.address, "--from-lsn", str(first), "--count", "1")
    assert ok.returncode == 0 and ok.stdout.startswith(f"{first}\tput\t"), ok.stderr
