"""``kevo-repl load`` against a primary that stops answering mid-load (issue 9).

The primary is frozen with SIGSTOP while a pipelined window is in flight: the load (without
``--retry-s``) must still say which lines were committed (every batch whose answer arrived)
and which were sent without an answer, name the last committed LSN and the first line not
committed, exit 3, and agree with what the primary holds once it runs again. With
``--retry-s``: tests/test_load_retry.py.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import cast

import pytest

from kevo_repl.client import Client, NodeUnreachableError, PipelineTimeoutError, batch_request
from kevo_repl.load_send import Batch, LoadResult, LoadUnreachableError, WindowSender
from kevo_repl.wire import pb
from tests.cli_support import Spawned
from tests.nodes import Cluster, wait_for

LINES = 300_000  # far more than the load can send before the primary is stopped
BATCH = 50
TIMEOUT_MS = 1000  # small, yet no false alarm from a slow fsync on a busy machine


def _key(line: int) -> bytes:
    return b"ld:%07d" % line  # line i holds the i-th entry: the primary's LSN i


def test_a_timeout_mid_load_reports_what_was_committed(cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.primary()
    data = tmp_path / "big.tsv"
    data.write_bytes(b"".join(_key(i) + b"\tv\n" for i in range(1, LINES + 1)))
    load = Spawned.start(
        "load",
        "--node",
        primary.address,
        str(data),
        "--batch",
        str(BATCH),
        "--request-timeout-ms",
        str(TIMEOUT_MS),
    )
    try:
        with primary.client(1000) as c:
            wait_for("the load under way", lambda: c.status_message().lsn >= 20 * BATCH)
        primary.signal(signal.SIGSTOP)
        try:
            code = load.wait(30)
        finally:
            primary.signal(signal.SIGCONT)
    finally:
        if load.proc.poll() is None:
            load.signal(signal.SIGTERM)
            load.wait()
    out = load.output()
    assert code == 3, out
    assert f"{primary.address} (requests go to" in out and f"within {TIMEOUT_MS} ms" in out
    committed = re.search(r"lines 1-(\d+) were committed \((\d+) entries, up to LSN (\d+)\)", out)
    unknown = re.search(
        r"lines (\d+)-(\d+) have an unknown outcome "
        r"\(sent, no answer: they may or may not have been committed\)",
        out,
    )
    unsent = re.search(r"nothing after line (\d+) was sent", out)
    resume = re.search(
        r"last committed LSN (\d+); first line not committed: (\d+) \(load from there, or "
        r"with --retry-s S to wait for the primary and resume\)",
        out,
    )
    assert committed and unknown and unsent and resume, out
    through, entries, lsn = map(int, committed.groups())
    first_unknown, last_unknown = map(int, unknown.groups())
    assert through == entries == lsn >= 20 * BATCH  # one entry per line, a fresh primary
    assert first_unknown == through + 1
    assert tuple(map(int, resume.groups())) == (lsn, through + 1)
    assert last_unknown == int(unsent.group(1)) < LINES
    assert (last_unknown - through) % BATCH == 0 and last_unknown - through <= 16 * BATCH
    # Running again, the primary holds every committed line, no line that was never sent, and
    # of the unknown ones a prefix (they are applied in order): keys == LSN in one read.
    with primary.client(3000) as c:
        held = c.digest()
        assert entries <= held.lsn <= last_unknown and held.keys == held.lsn
        assert c.get(_key(through)) == b"v"
        assert c.get(_key(last_unknown + 1)) is None
    assert primary.stop() == 0


class _Silent:
    """A client whose window times out with the given answers (None: sent, no answer)."""

    def __init__(self, answers: list[pb.Response | None]) -> None:
        self.answers = answers

    def call_many(self, requests: list[pb.Request], *, window: int) -> list[pb.Response]:
        raise PipelineTimeoutError("no answer from n:1 within 5 ms", self.answers)

    def batch_request(self, entries: list[tuple[bytes, bytes | None]]) -> pb.Request:
        return batch_request(entries)


def _written(lsn: int) -> pb.Response:
    return pb.Response(write=pb.WriteResponse(lsn=lsn))


def test_answers_after_a_silent_batch_still_count_as_committed() -> None:
    pending = [Batch(1 + 2 * i, 2 + 2 * i, [(b"k", b"v")] * 2, 0) for i in range(5)]
    answers = [_written(2), None, _written(6), None]  # the fifth batch was never sent
    result = LoadResult()
    with pytest.raises(LoadUnreachableError) as err:
        WindowSender(cast(Client, _Silent(answers)), result).send(pending)
    assert isinstance(err.value, NodeUnreachableError)  # exit 3 from the CLI
    assert str(err.value) == (
        "no answer from n:1 within 5 ms; lines 1-2 were committed (2 entries, up to LSN 2); "
        "lines 5-6 were committed too (2 entries, up to LSN 6); lines 3-4, 7-8 have an unknown "
        "outcome (sent, no answer: they may or may not have been committed); "
        "nothing after line 8 was sent; last committed LSN 2; first line not committed: 3 "
        "(load from there, or with --retry-s S to wait for the primary and resume)"
    )
    assert (result.entries, result.committed_through_line, result.last_lsn) == (2, 2, 2)


def test_the_load_progress_bar_shows_bytes_read_and_entries() -> None:
    import io

    from kevo_repl.load import Progress

    out = io.StringIO()
    bar = Progress(out, total_bytes=1000)
    bar.update(10, 500)
    bar.close()
    bar.close()  # once only
    (line,) = [x for x in out.getvalue().splitlines() if x.startswith("load")]
    assert "50%" in line and "10 entries" in line, out.getvalue()
