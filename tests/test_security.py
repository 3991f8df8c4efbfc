"""CURVE + ZAP on real node processes: who gets in, what each role may do, revocation."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from kevo_repl.adapters.security import (
    ClientCurve,
    KeyRing,
    SecurityError,
    parse_authorized_keys,
    write_keypair,
)
from kevo_repl.client import Client, NodeUnreachableError, RemoteError
from kevo_repl.testing.ports import free_port_pair
from kevo_repl.wire import pb
from tests.cli_support import kevo
from tests.faults.checkers import count_events
from tests.nodes import Cluster, Node, wait_for


def _key(keys: Path, name: str) -> str:
    return (keys / f"{name}.key").read_text().split('"')[1]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    for name in ("primary", "r1", "app", "ro", "ops", "intruder"):
        write_keypair(d, name)
    lines = [
        f"{_key(d, 'r1')} replica r1",
        f"{_key(d, 'app')} client-rw",
        f"{_key(d, 'ro')} client-ro",
        f"{_key(d, 'ops')} admin",
        f"{_key(d, 'primary')} admin primary",
    ]
    (d / "authorized_keys").write_text("# who may connect\n" + "\n".join(lines) + "\n")
    return d


def _client(node: Node, keys: Path, name: str, timeout_ms: int = 2000) -> Client:
    return Client(node.address, timeout_ms=timeout_ms, curve=ClientCurve.from_dir(keys, name))


def _start_secure(cluster: Cluster, keys: Path, name: str, role: str, *extra: str) -> Node:
    port = free_port_pair()
    argv = [
        sys.executable,
        "-m",
        "kevo_repl",
        "--log-format",
        "json",
        role,
        "--data",
        str(cluster.root / name),
        "--port",
        str(port),
        "--keys",
        str(keys),
        *extra,
    ]
    node = Node(name, port, argv, cluster.root / f"{name}.log").start()
    cluster.nodes.append(node)

    def serving() -> bool:
        node.assert_alive()
        with Client(node.address, timeout_ms=300, curve=_server_curve(keys, name, role)) as c:
            c.status_message()
        return True

    wait_for(f"{name} serving", serving)
    return node


def _server_curve(keys: Path, name: str, role: str) -> ClientCurve:
    server = keys / ("primary.key" if role == "primary" else f"{name}.key")
    return ClientCurve.from_dir(keys, "ops", server)


def _digest(node: Node, keys: Path, server: str) -> object:
    with Client(node.address, curve=ClientCurve.from_dir(keys, "ops", keys / f"{server}.key")) as c:
        return c.digest()


def test_roles_identity_and_refusals(cluster: Cluster, keys: Path) -> None:
    primary = _start_secure(cluster, keys, "primary", "primary")
    replica = _start_secure(
        cluster,
        keys,
        "r1",
        "replica",
        "--primary",
        primary.address,
        "--id",
        "r1",
        "--heartbeat-ms",
        "100",
    )
    with _client(primary, keys, "app") as app:
        lsn = app.batch([(b"k%d" % i, b"v%d" % i) for i in range(100)]).lsn
    wait_for(
        "secured replica converges",
        lambda: _digest(replica, keys, "r1") == _digest(primary, keys, "primary"),
    )
    # client-ro reads (tail included) but may not write, nor see who follows the node
    with _client(primary, keys, "ro") as ro:
        assert ro.get(b"k7") == b"v7"
        with pytest.raises(RemoteError) as err:
            ro.put(b"x", b"y")
        assert err.value.code == pb.ERROR_UNAUTHORIZED
        seen = ro.status_message()
        assert seen.lsn == lsn and len(seen.replicas) == 0
        assert ro.lsn_at_time(0).lsn == 1  # tail --from-time's lookup: the roles that tail
    with _client(primary, keys, "ops") as ops:
        assert [r.replica_id for r in ops.status_message().replicas] == ["r1"]
    out = kevo(
        "tail", "--node", primary.address, "--from-lsn", "1", "--count", "3", "--format", "json",
        "--keys", str(keys), "--key-name", "ro",
    )  # fmt: skip
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3, out.stderr
    # a replica key cannot write as a client, nor tail (no Status, no LsnAtTime)
    with _client(primary, keys, "r1") as rk:
        with pytest.raises(RemoteError) as err:
            rk.put(b"x", b"y")
        assert err.value.code == pb.ERROR_UNAUTHORIZED
        with pytest.raises(RemoteError) as err:
            rk.lsn_at_time(0)
        assert err.value.code == pb.ERROR_UNAUTHORIZED
    # an unlisted key gets no response at all; neither does a client without CURVE
    with (
        _client(primary, keys, "intruder", timeout_ms=500) as bad,
        pytest.raises(NodeUnreachableError),
    ):
        bad.get(b"k1")
    with Client(primary.address, timeout_ms=500) as plain, pytest.raises(NodeUnreachableError):
        plain.get(b"k1")
    with _client(primary, keys, "app") as app:
        assert app.get(b"k99", min_lsn=lsn) == b"v99"
        assert app.status_message().server_key == _key(keys, "primary")  # announced for key dirs
    # Through the replica: a write and a tail are sent on to the primary, with the
    # primary's key from the key dir (not the replica's, given for the first hop)
    via_r1 = ("--node", replica.address, "--keys", str(keys), "--server-key", str(keys / "r1.key"))
    out = kevo("put", *via_r1, "--key-name", "app", "through-r1", "v")
    assert out.returncode == 0, out.stderr
    out = kevo("tail", *via_r1, "--key-name", "ro", "--from-lsn", "1", "--count", "2")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr
    # the relative starts ask the primary too (its Status, its LsnAtTime), with its key
    out = kevo("tail", *via_r1, "--key-name", "ro", "--from-lsn", "-200", "--until-lsn", "3")
    assert out.returncode == 0, out.stderr
    assert [int(x.split("\t")[0]) for x in out.stdout.splitlines()] == [1, 2, 3]
    assert re.search(r"--from-lsn -200: 127\.0\.0\.1:\d+ retains only LSN 1\.\.10[01] ", out.stderr)
    early = ("--from-time", "2000-01-01T00:00:00Z", "--until-lsn", "2")
    out = kevo("tail", *via_r1, "--key-name", "ro", *early)
    assert out.returncode == 0, out.stderr
    assert [int(x.split("\t")[0]) for x in out.stdout.splitlines()] == [1, 2]


def _subscriber(
    ctx: zmq.Context[zmq.Socket[bytes]], node: Node, keys: Path, name: str
) -> zmq.Socket[bytes]:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    ClientCurve.from_dir(keys, name).apply(sub)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://{node.address}")
    return sub


def _drain(sub: zmq.Socket[bytes]) -> int:
    n = 0
    while sub.poll(0, zmq.POLLIN):
        sub.recv()
        n += 1
    return n


def test_unlisted_key_gets_no_stream_and_revocation_cuts_a_subscriber(
    cluster: Cluster, keys: Path
) -> None:
    primary = _start_secure(cluster, keys, "primary", "primary")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    intruder = _subscriber(ctx, primary, keys, "intruder")
    listener = _subscriber(ctx, primary, keys, "app")
    try:
        with _client(primary, keys, "app") as app:

            def listener_hears() -> bool:
                app.put(b"ping", b"x")
                return listener.poll(100, zmq.POLLIN) != 0

            wait_for("listed subscriber receives the stream", listener_hears)
            assert _drain(intruder) == 0, "an unlisted key received stream bytes"
            # revoke app: remove its line, SIGHUP; its established subscription is cut
            lines = (keys / "authorized_keys").read_text().splitlines()
            app_key = _key(keys, "app")
            (keys / "authorized_keys").write_text(
                "\n".join(line for line in lines if not line.startswith(app_key)) + "\n"
            )
            assert primary.proc is not None
            os.kill(primary.proc.pid, signal.SIGHUP)
        with _client(primary, keys, "ops") as ops:

            def cut() -> bool:
                _drain(listener)
                ops.status_message()  # the node serves admin after the rebind
                return True

            wait_for("primary rebinds", cut)
            # A beacon every 200 ms reaches listed subscribers, never the revoked one.
            watcher = _subscriber(ctx, primary, keys, "ops")
            try:
                wait_for(
                    "a listed subscriber still hears beacons",
                    lambda: watcher.poll(300, zmq.POLLIN) != 0,
                )
                _drain(listener)
                assert not listener.poll(1000, zmq.POLLIN), "revoked subscriber still receives"
                assert _drain(intruder) == 0
            finally:
                watcher.close(0)
    finally:
        intruder.close(0)
        listener.close(0)
        ctx.term()


def test_a_replica_key_registers_only_under_its_own_name(cluster: Cluster, keys: Path) -> None:
    primary = _start_secure(cluster, keys, "primary", "primary")
    for suffix in (".key", ".key_secret"):  # r1's key pair, presented as "r2"
        (keys / f"r2{suffix}").write_bytes((keys / f"r1{suffix}").read_bytes())
    (keys / "r2.key_secret").chmod(0o600)
    impostor = _start_secure(
        cluster, keys, "r2", "replica", "--primary", primary.address, "--id", "r2"
    )
    wait_for("refusal logged", lambda: "UNAUTHORIZED" in impostor.log_path.read_text())
    with _client(primary, keys, "ops") as ops:
        assert [r.replica_id for r in ops.status_message().replicas] == []


NAMELESS = "a replica key needs the replica id it may register as"


def _add_nameless_replica_line(keys: Path) -> None:
    """Line 7 of authorized_keys: r2's key as ``replica`` with no id (it could register as any)."""
    write_keypair(keys, "r2")
    with (keys / "authorized_keys").open("a") as f:
        f.write(f"{_key(keys, 'r2')}  replica\n")


def test_a_replica_line_without_an_id_is_malformed(keys: Path) -> None:
    path = keys / "authorized_keys"
    ring = KeyRing(path)
    assert ring.name(_key(keys, "r1")) == "r1"
    assert ring.name(_key(keys, "app")) == ""  # a name is optional for the other roles
    _add_nameless_replica_line(keys)
    with pytest.raises(SecurityError) as err:
        parse_authorized_keys(path)
    assert f"{path}:7: " in str(err.value) and NAMELESS in str(err.value)
    with pytest.raises(SecurityError):  # a reload that fails keeps the old list in force
        ring.reload()
    assert len(ring) == 5 and ring.role(_key(keys, "r1")) == "replica"
    assert ring.role(_key(keys, "r2")) is None


def test_a_node_refuses_to_start_with_a_nameless_replica_key(tmp_path: Path, keys: Path) -> None:
    _add_nameless_replica_line(keys)
    argv = [sys.executable, "-m", "kevo_repl", "primary", "--data", str(tmp_path / "p")]
    argv += ["--port", str(free_port_pair()), "--keys", str(keys)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=20)  # before the fix it serves: a timeout here
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)
    text = err.decode(errors="replace")
    assert proc.returncode == 1, text
    assert f"{keys / 'authorized_keys'}:7: " in text and NAMELESS in text


def test_sighup_with_a_nameless_replica_key_keeps_the_old_list(
    cluster: Cluster, keys: Path
) -> None:
    primary = _start_secure(cluster, keys, "primary", "primary")
    _add_nameless_replica_line(keys)
    primary.signal(signal.SIGHUP)

    def reload_failed() -> bool:
        log = primary.log_path.read_text()
        return "keys_reload_failed" in log and NAMELESS in log

    wait_for("the reload failure logged", reload_failed)
    with _client(primary, keys, "app") as app:  # the old list is in force
        assert app.put(b"still", b"in").lsn > 0
    with _client(primary, keys, "r2", timeout_ms=500) as r2, pytest.raises(NodeUnreachableError):
        r2.wal_sync(1)  # r2 was never admitted


def test_keygen_writes_a_private_secret(tmp_path: Path) -> None:
    out = tmp_path / "k"
    r = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "keygen", "--out", str(out), "node-a"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "node-a.key_secret").stat().st_mode & 0o777 == 0o600
    assert "authorized_keys" in r.stdout
    again = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "keygen", "--out", str(out), "node-a"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 1 and "exists" in again.stderr


def test_a_reload_that_revokes_nothing_keeps_every_session(cluster: Cluster, keys: Path) -> None:
    primary = _start_secure(cluster, keys, "primary", "primary")
    replica = _start_secure(
        cluster, keys, "r1", "replica", "--primary", primary.address, "--id", "r1"
    )
    with _client(primary, keys, "app") as app:
        assert app.put(b"a", b"1", wait_replicas=1, timeout_ms=10_000).replicas_applied == 1
        primary.signal(signal.SIGHUP)
        wait_for("reloaded", lambda: count_events(primary.log_path, "keys_reloaded") == 1)
        # a cut session would make the replica register again before it could ack this
        assert app.put(b"b", b"2", wait_replicas=1, timeout_ms=10_000).replicas_applied == 1
    assert count_events(replica.log_path, "registered") == 1
    assert count_events(replica.log_path, "primary_forgot_us") == 0
