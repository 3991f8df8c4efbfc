"""Idempotent batch retries on real nodes (issue 11): ``load --retry-s`` through a primary's
SIGKILL and restart, and the primary's window across a restart and a promotion.

The load's input overwrites a few hot keys again and again, so a batch written twice (or
lost) would leave a wrong final value or count. Exactly-once is checked where it is visible:
the node's last LSN equals the number of lines loaded (one entry, one LSN, per line) and
every key holds its last line's value.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import pytest

from kevo_repl.client import Client, RemoteError, batch_request, mark_retry
from kevo_repl.wire import pb
from tests.cli_support import KEVO, SIGINT_DEFAULT, kevo
from tests.nodes import Cluster, Node, converged, wait_for

LINES = 20_000
HOT_KEYS = 97  # every key is overwritten about 200 times
BATCH = 20


def _line(i: int) -> bytes:
    return b"hot:%02d\tline %d\n" % (i % HOT_KEYS, i)


def _expected() -> dict[bytes, bytes]:
    return {b"hot:%02d" % (i % HOT_KEYS): b"line %d" % i for i in range(1, LINES + 1)}


def _lsn(node: Node) -> int:
    with node.client(1000) as c:
        return c.status_message().lsn


class _Load:
    """``kevo-repl load -`` fed by the test through a pipe, so the test decides when it is
    mid-load; output (stdout and stderr) collected as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*SIGINT_DEFAULT, *KEVO, "load", *args, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.out: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.out.append(raw.decode(errors="replace"))
                self._cond.notify_all()

    def feed(self, first: int, last: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(_line(i) for i in range(first, last + 1)))
        self.proc.stdin.flush()

    def wait_output(self, text: str, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: text in "".join(self.out), timeout):
                raise AssertionError(f"no {text!r} from the load:\n{''.join(self.out)}")

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        with self._cond:
            return code, "".join(self.out)

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_load_with_retry_survives_a_killed_primary_and_writes_each_batch_once(
    cluster: Cluster,
) -> None:
    primary = cluster.primary()
    load = _Load("--node", primary.address, "--batch", str(BATCH), "--retry-s", "30",
                 "--request-timeout-ms", "1000")  # fmt: skip
    feeder: threading.Thread | None = None
    try:
        load.feed(1, 12_000)
        wait_for("the load under way", lambda: _lsn(primary) >= 10_000)
        primary.kill()  # SIGKILL mid-load: windows in flight, some committed, some not
        feeder = threading.Thread(target=load.feed, args=(12_001, LINES), daemon=True)
        feeder.start()  # the rest waits in the pipe while the load retries
        load.wait_output("retrying for up to 30 s")
        cluster.restart(primary)  # the same data directory and ports
        feeder.join(60)
        code, out = load.finish()
    finally:
        load.end()
    assert code == 0, out
    assert str(LINES) in out.splitlines(), out  # the last LSN printed: the last line's
    assert "batches resent after an outage" in out, out
    with primary.client(3000) as c:
        assert c.status_message().lsn == LINES  # every line once: no batch doubled, none lost
        assert c.digest().keys == HOT_KEYS
        for key, value in _expected().items():
            assert c.get(key) == value, key


def test_load_with_retry_answers_batches_the_frozen_primary_committed_late(
    cluster: Cluster,
) -> None:
    """SIGSTOP: the load times out and resends while the primary still holds its old
    requests; resumed, it commits them (their answers go to a closed socket) and must then
    answer the resends from its window instead of writing them again."""
    primary = cluster.primary()
    load = _Load("--node", primary.address, "--batch", str(BATCH), "--retry-s", "30",
                 "--request-timeout-ms", "500")  # fmt: skip
    try:
        load.feed(1, 8_000)
        wait_for("the load under way", lambda: _lsn(primary) >= 4_000)
        primary.signal(signal.SIGSTOP)
        try:
            load.wait_output("retrying for up to 30 s")
        finally:
            primary.signal(signal.SIGCONT)
        load.feed(8_001, LINES)
        code, out = load.finish()
    finally:
        load.end()
    assert code == 0, out
    with primary.client(3000) as c:
        assert c.status_message().lsn == LINES, out
        for key, value in _expected().items():
            assert c.get(key) == value, key


def _resend(c: Client, req: pb.Request) -> pb.WriteResponse:
    again = pb.Request()
    again.CopyFrom(req)
    return c.call(again).write


def test_a_resent_batch_gets_its_original_lsn_across_a_restart(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        c.put(b"before", b"x")  # LSN 1
        req = c.batch_request([(b"a", b"1"), (b"b", b"2")])
        first = _resend(c, req)
        assert (first.first_lsn, first.lsn) == (2, 3)
        mark_retry(req)
        again = _resend(c, req)
        assert (again.first_lsn, again.lsn) == (2, 3) and c.status_message().lsn == 3
    primary.kill()
    cluster.restart(primary)
    with primary.client() as c:  # another connection, another client: the same answer
        assert _resend(c, req).lsn == 3 and c.status_message().lsn == 3  # the window, from the WAL
        other = pb.Request()
        other.CopyFrom(req)
        other.batch.batch = batch_request([(b"a", b"changed")]).batch.batch
        with pytest.raises(RemoteError) as err:
            c.call(other)
        assert err.value.code == pb.ERROR_SEQ_REUSED and "other contents" in str(err.value)
        assert c.status_message().lsn == 3 and c.get(b"a") == b"1"  # nothing written
        # A retry of a seq never committed, first sent after LSN 3: written, once.
        fresh = c.batch_request([(b"c", b"3")])
        assert fresh.batch.seen_lsn == 3
        mark_retry(fresh)
        assert _resend(c, fresh).lsn == 4 and _resend(c, fresh).lsn == 4
        # A batch without a client id (an older client) is written each time it is sent.
        plain = batch_request([(b"d", b"4")])
        assert [_resend(c, plain).lsn for _ in range(2)] == [5, 6]


def test_a_promoted_replica_answers_retries_of_what_its_primary_committed(
    cluster: Cluster,
) -> None:
    primary = cluster.primary()
    replica = cluster.replica("r1", primary)
    with primary.client() as c:
        req = c.batch_request([(b"k%d" % i, b"v") for i in range(10)])
        lsn = _resend(c, req).lsn
    wait_for("the replica caught up", lambda: converged(primary, replica))
    primary.kill()
    out = kevo("promote", "--node", replica.address, "--force", "--json")
    assert out.returncode == 0, out.stderr
    fork = json.loads(out.stdout)["fork_lsn"]
    assert fork == lsn
    with replica.client() as c:
        mark_retry(req)
        assert _resend(c, req).lsn == lsn and c.status_message().lsn == lsn


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_a_retry_of_a_batch_still_pending_is_answered_with_it(cluster: Cluster, fsync: str) -> None:
    """Pipelined back to back, the copy arrives while the original is queued or syncing:
    it is attached to it and answered with its LSNs, never queued itself. (With ``--fsync
    interval`` both are answered at the write; Status shows the LSN once it is durable.)"""
    primary = cluster.primary("primary", "--fsync", fsync)
    with primary.client() as c:
        req = c.batch_request([(b"k%d" % i, b"v") for i in range(500)])
        copy = pb.Request()
        copy.CopyFrom(req)
        mark_retry(copy)
        answers = c.call_many([req, copy])
        assert [(a.write.first_lsn, a.write.lsn) for a in answers] == [(1, 500)] * 2
        assert wait_for("the batch durable", lambda: c.status_message().lsn) == 500  # written once
