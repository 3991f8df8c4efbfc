"""CURVE encryption and ZAP authentication: key files, the authorized key list, roles.

A node with ``--keys DIR`` is a CURVE server on its PUB and ROUTER: traffic is encrypted and
a ZAP handler admits only public keys listed in ``DIR/authorized_keys``, one per line::

    <z85 public key>  <role>  [name]     (the name is required for role replica)

Roles: ``replica`` (register, heartbeat, ack, WAL sync, bootstrap), ``client-ro`` (get,
digest, scan; WAL sync, LSN-at-time and status for tail), ``client-rw`` (client-ro +
writes), ``admin`` (client-ro + administration, and status with followers). The peer's
identity is its CURVE key, which libzmq hands to us as the message's ``User-Id`` after the
handshake, never a name the peer declares; a replica key may register only under its name,
so a ``replica`` line without one is malformed. SIGHUP reloads the list (``KeyRing.reload``);
a malformed file keeps the old list in force.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
import zmq.auth
import zmq.utils.z85

from kevo_repl.core.errors import KevoError

__all__ = [
    "AUTHORIZED_KEYS",
    "ROLE_REQUESTS",
    "ROLE_STREAM",
    "SEES_FOLLOWERS",
    "ClientCurve",
    "KeyPair",
    "KeyRing",
    "SecurityError",
    "ServerSecurity",
    "apply_client_keys",
    "load_keypair",
    "load_public_key",
    "node_key_name",
    "parse_authorized_keys",
    "write_keypair",
]

AUTHORIZED_KEYS: Final = "authorized_keys"
ZAP_DOMAIN: Final = "kevo"
_READ: Final = frozenset(
    {"get", "digest", "wal_sync", "lsn_at_time", "status", "scan"}
)  # status: see SEES_FOLLOWERS; wal_sync, lsn_at_time and status: what tail needs
ROLE_REQUESTS: Final[dict[str, frozenset[str]]] = {
    "replica": frozenset({"register", "heartbeat", "ack", "wal_sync", "bootstrap", "rewind"}),
    "client-ro": _READ,
    "client-rw": _READ | {"put", "delete", "batch"},
    "admin": _READ | {"status", "promote", "repoint", "handover", "forget", "bootstrap"},
}
ROLE_STREAM: Final = frozenset(ROLE_REQUESTS)  # every listed role may follow the stream
SEES_FOLLOWERS: Final = frozenset({"admin"})  # others get Status without the follower list


class SecurityError(KevoError):
    """Key material is missing, unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes  # z85, 40 bytes


def write_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600 from creation on).

    The files use libzmq's certificate format, so ``zmq.auth.load_certificate`` reads them.
    Refuses to overwrite an existing key: rotating is "new name, list it, revoke the old".
    """
    if not name or "/" in name or name.startswith("."):
        raise SecurityError(f"key name must be a plain file name, got {name!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    public_path = out_dir / f"{name}.key"
    secret_path = out_dir / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise SecurityError(f"{path} exists; choose another name or remove it first")
    header = f"#   ****  kevo-repl CURVE key '{name}'  ****\nmetadata\ncurve\n"
    public_text = f'{header}    public-key = "{public.decode()}"\n'
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(public_text + f'    secret-key = "{secret.decode()}"\n')
    public_path.write_text(public_text)
    return public_path, secret_path


def load_keypair(secret_path: Path) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(str(secret_path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read key pair {secret_path}: {exc}") from exc
    if not secret:
        raise SecurityError(f"{secret_path} holds no secret key")
    mode = secret_path.stat().st_mode & 0o077
    if mode:
        raise SecurityError(f"{secret_path} is readable by others (mode {oct(mode)}); chmod 600")
    return KeyPair(public, secret)


def load_public_key(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read public key {path}: {exc}") from exc
    return public


@dataclass(frozen=True, slots=True)
class _Entry:
    role: str
    name: str


class KeyRing:
    """The authorized keys, swappable at run time (the ZAP thread reads, SIGHUP rewrites)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> set[str]:
        """Re-read the file; returns the keys that were listed before and are gone now."""
        entries = parse_authorized_keys(self.path)
        with self._lock:
            revoked = set(self._entries) - set(entries)
            revoked |= {
                k for k, e in entries.items() if k in self._entries and self._entries[k] != e
            }
            self._entries = entries
        return revoked

    def role(self, user_id: str) -> str | None:
        entry = self._entries.get(user_id)
        return entry.role if entry else None

    def name(self, user_id: str) -> str:
        entry = self._entries.get(user_id)
        return entry.name if entry else ""

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's ZAP credentials provider hook: is this public key listed?"""
        return key.decode("ascii", "replace") in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def parse_authorized_keys(path: Path) -> dict[str, _Entry]:
    """The listed keys; ``SecurityError`` naming the file and line of the first bad line.

    A ``replica`` line must name the replica id its key may register as: without one the
    key could register under any id and take over another replica's registry entry.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecurityError(f"cannot read {path}: {exc}") from exc
    entries: dict[str, _Entry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):  # no inline comments: z85 keys may contain '#'
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or len(parts[0]) != 40 or parts[1] not in ROLE_REQUESTS:
            raise SecurityError(
                f"{path}:{number}: expected '<40-char z85 public key> <role> [name]' with role "
                f"one of {', '.join(sorted(ROLE_REQUESTS))}"
            )
        if parts[1] == "replica" and len(parts) == 2:  # unnamed, it could register as anyone
            raise SecurityError(
                f"{path}:{number}: a replica key needs the replica id it may register as: "
                "'<40-char z85 public key> replica <replica id>'"
            )
        entries[parts[0]] = _Entry(parts[1], parts[2] if len(parts) == 3 else "")
    return entries


class ServerSecurity:
    """A node's CURVE server side: its key pair, the key ring and the ZAP thread.

    ``refused`` holds the latest handshakes ZAP refused (at most 256: a flood of them costs
    no memory), for the node's loop to log, rate-limited.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], keys_dir: Path, name: str) -> None:
        self.keys = load_keypair(keys_dir / f"{name}.key_secret")
        self.ring = KeyRing(keys_dir / AUTHORIZED_KEYS)
        from kevo_repl.adapters.zap import RefusedHandshake, TellingAuthenticator  # asyncio

        self.refused: deque[RefusedHandshake] = deque(maxlen=256)
        self._auth = TellingAuthenticator(ctx, self.refused)
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.ring)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server; call before bind."""
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)

    def allowed(self, user_id: str, request_kind: str) -> bool:
        role = self.ring.role(user_id)
        return role is not None and request_kind in ROLE_REQUESTS[role]

    def sees_followers(self, user_id: str) -> bool:
        """May this key see who follows the node (ids, addresses) in its Status?"""
        return self.ring.role(user_id) in SEES_FOLLOWERS

    def close(self) -> None:
        self._auth.stop()


def node_key_name(address: str) -> str:
    """``HOST:PORT`` as a key file name (``HOST_PORT``): where a node's public key is found."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", address.strip("[]"))


def apply_client_keys(sock: zmq.Socket[bytes], keys: KeyPair, server_public: bytes) -> None:
    """Make ``sock`` a CURVE client of the server with ``server_public``; call before connect."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


@dataclass(frozen=True, slots=True)
class ClientCurve:
    """What a CURVE client needs: its own pair and the server's public key (and the key
    directory, where the keys of the other nodes it may be sent to are found)."""

    keys: KeyPair
    server_public: bytes
    keys_dir: Path | None = None

    @classmethod
    def from_dir(cls, keys_dir: Path, name: str, server_key: Path | None = None) -> ClientCurve:
        """``DIR/NAME.key_secret`` and the server's ``DIR/primary.key`` (or ``server_key``)."""
        keys = load_keypair(keys_dir / f"{name}.key_secret")
        return cls(keys, load_public_key(server_key or keys_dir / "primary.key"), keys_dir)

    def for_node(self, address: str) -> ClientCurve:
        """The same client against the node at ``address`` (a redirect to the primary): its
        public key is ``DIR/HOST_PORT.key`` if the key dir has one, else ``DIR/primary.key``
        (the server key given for the first node belongs to that node only)."""
        if self.keys_dir is None:
            return self
        named = self.keys_dir / f"{node_key_name(address)}.key"
        path = named if named.exists() else self.keys_dir / "primary.key"
        return ClientCurve(self.keys, load_public_key(path), self.keys_dir)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        apply_client_keys(sock, self.keys, self.server_public)
