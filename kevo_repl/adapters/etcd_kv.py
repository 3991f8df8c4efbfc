"""etcd v3 through its JSON gateway: leases, ranges, transactions and a watch, nothing more.

The leader lock and the members' positions live in etcd (``kevo_repl/ha/``); this module is
the only one that speaks to it. It uses ``etcd3gw`` (OpenStack's client of the gateway
every etcd >= 3.3 serves, pure Python over ``requests``) for the HTTP session, the API path
discovery and leases, and builds range, txn and watch bodies itself, because the agent needs
what that client does not return: the store revision of a read, each key's mod revision and
lease (a transaction compares them), and a watch whose end is *seen* (the client's own watch
thread dies silently when etcd goes away, and a follower must then re-read and re-watch).

Several endpoints may be given; a request that cannot reach one tries the next, and an
``EtcdUnavailable`` says none answered within the timeout. Keys and values are ``str``
(JSON documents); the wire encodes them in base64, as the gateway requires.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from kevo_repl.core.errors import UnreachableError

__all__ = [
    "EtcdKV",
    "EtcdUnavailable",
    "KeyValue",
    "WatchEvent",
    "parse_endpoints",
]


class EtcdUnavailable(UnreachableError):
    """No etcd endpoint answered: the caller keeps its last view and must not promote."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put or delete under the watched prefix; ``key == ""`` means the watch ended."""

    key: str
    value: str
    deleted: bool
    revision: int


def parse_endpoints(urls: str) -> list[tuple[str, int]]:
    """``http://h:2379,h2:2379`` -> ``[(h, 2379), (h2, 2379)]``; a clear error otherwise."""
    out: list[tuple[str, int]] = []
    for raw in urls.split(","):
        raw = raw.strip()
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        if parts.scheme != "http":
            raise ValueError(f"etcd endpoint {raw!r}: only http:// is supported")
        if not parts.hostname:
            raise ValueError(f"etcd endpoint {raw!r} names no host")
        try:
            port = parts.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {raw!r} has a bad port") from None
        out.append((parts.hostname, port))
    if not out:
        raise ValueError("no etcd endpoint given (e.g. --etcd http://127.0.0.1:2379)")
    return out


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw["key"]),
        value=_unb64(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


class EtcdKV:
    """One client over one or more endpoints; safe to use from one thread at a time."""

    def __init__(self, urls: str, timeout_s: float = 1.0) -> None:
        self.endpoints = parse_endpoints(urls)
        self.timeout_s = timeout_s
        self._at = 0
        self._clients = [
            etcd3gw.client(host=h, port=p, timeout=timeout_s) for h, p in self.endpoints
        ]

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        last = ""
        for _ in range(len(self._clients)):
            client = self._clients[self._at]
            try:
                return client.post(client.get_url(path), data=json.dumps(body))
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
                last = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            except requests.RequestException as exc:  # api path discovery, a reset mid-read
                last = f"{type(exc).__name__}: {exc}"[:200]
            except etcd_exc.Etcd3Exception as exc:
                # etcd3gw puts the HTTP reason ("Not Found") in str(exc), etcd's own error
                # ("etcdserver: requested lease not found") in detail_text
                detail = exc.detail_text or ""
                if "lease not found" in f"{exc} {detail}":
                    raise LookupError("lease not found") from None
                last = f"etcd refused: {exc} {detail}".strip()[:200]
            self._at = (self._at + 1) % len(self._clients)
        raise EtcdUnavailable(f"etcd at {self.where} did not answer: {last}")

    # ---- leases ------------------------------------------------------------------------------

    def grant(self, ttl_s: int) -> int:
        return int(self._post("/lease/grant", {"TTL": ttl_s})["ID"])

    def refresh(self, lease: int) -> int:
        """Keep ``lease`` alive; its remaining TTL in seconds, or -1 when it has expired."""
        result = self._post("/lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(LookupError):
            self._post("/kv/lease/revoke", {"ID": lease})

    # ---- keys --------------------------------------------------------------------------------

    def get_prefix(self, prefix: str) -> tuple[int, dict[str, KeyValue]]:
        """Every key under ``prefix`` and the store revision the read saw."""
        body = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        result = self._post("/kv/range", body)
        revision = int(result["header"]["revision"])
        return revision, {kv.key: kv for kv in map(_kv, result.get("kvs", []))}

    def put(self, key: str, value: str, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self._post("/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> None:
        self._post("/kv/deleterange", {"key": _b64(key)})

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> bool:
        """All ``compare`` hold -> run ``success`` (atomically); True if they held."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        return bool(self._post("/kv/txn", body).get("succeeded", False))

    # ---- txn pieces --------------------------------------------------------------------------

    @staticmethod
    def absent(key: str) -> dict[str, Any]:
        return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}

    @staticmethod
    def unchanged(key: str, mod_revision: int) -> dict[str, Any]:
        return {
            "key": _b64(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": mod_revision,
        }

    @staticmethod
    def put_op(key: str, value: str, lease: int = 0) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return {"request_put": body}

    @staticmethod
    def delete_op(key: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(key)}}

    # ---- watch -------------------------------------------------------------------------------

    def watch_prefix(
        self, prefix: str, start_revision: int, on_event: Callable[[WatchEvent], None]
    ) -> Callable[[], None]:
        """Stream puts and deletes under ``prefix`` from ``start_revision`` to ``on_event``
        on a thread of its own; when the stream ends for any reason ``on_event`` gets one
        ``WatchEvent(key="")``. Returns a function that cancels the watch."""
        host, port = self.endpoints[self._at]
        client = etcd3gw.client(host=host, port=port, timeout=None)
        create = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _prefix_end(prefix),
                "start_revision": start_revision,
            }
        }
        cancelled = threading.Event()
        holder: dict[str, requests.Response] = {}

        def stream() -> None:
            try:
                resp = client.session.post(
                    client.get_url("/watch"),
                    data=json.dumps(create),
                    stream=True,
                    timeout=(self.timeout_s, None),
                )
                holder["resp"] = resp
                if cancelled.is_set():
                    return
                for line in resp.iter_lines(chunk_size=None):  # type: ignore[call-overload]  # as data comes
                    if cancelled.is_set():
                        return
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    for raw in result.get("events", []):
                        kv = _kv(raw["kv"])
                        deleted = raw.get("type") == "DELETE"
                        on_event(WatchEvent(kv.key, kv.value, deleted, kv.mod_revision))
            except (requests.RequestException, ValueError, KeyError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    client.session.close()
                if not cancelled.is_set():
                    on_event(WatchEvent("", "", False, 0))

        def cancel() -> None:
            # Closing the response from here would wait on the reader's lock: shut the
            # connection down under it instead, and let the stream thread close the rest.
            cancelled.set()
            resp = holder.get("resp")
            if resp is None:
                return
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock = socket.fromfd(resp.raw.fileno(), socket.AF_INET, socket.SOCK_STREAM)
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

        threading.Thread(target=stream, name="etcd-watch", daemon=True).start()
        return cancel
