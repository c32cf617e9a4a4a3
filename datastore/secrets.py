"""Kubernetes Secrets the agent needs (BGP passwords), read from its own namespace and watched.

Does network I/O (HTTP to the API server, one thread per watched Secret). As in Calico, a BGP
password's ``secretKeyRef`` names a Secret in the namespace the agent runs in (``POD_NAMESPACE``,
from the downward API in deploy/pycalico.yaml; ``kube-system`` when unset). Every request names
its Secret: ``list`` and ``watch`` carry ``fieldSelector=metadata.name=<name>``, so a Role
restricted with ``resourceNames`` to the password Secrets is enough (RBAC authorizes such list and
watch requests by that name).

A changed Secret calls ``on_change`` (from a watch thread: hop to your own loop); the values are
read with ``resolve``. Values are never logged; errors are, once per change, naming the Secret.

With the etcd datastore the Secrets are still read through the Kubernetes API (as Calico does)
when a kubeconfig or an in-cluster service account is there; without one, ``NoSecrets`` stands
in and every password reference is reported as unreadable, naming the reason (``for_agent``).
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

import urllib3

from datastore.apiwatch import WatchThread
from datastore.base import Compacted, DatastoreError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "kube-system"
_RETRY = (1.0, 30.0)  # first and longest delay before a failed list/watch is tried again


class Ref(Protocol):
    """What a password reference has (``bgp.peers.SecretRef``)."""

    name: str
    key: str


def agent_namespace(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("POD_NAMESPACE") or DEFAULT_NAMESPACE


class SecretWatcher:
    """``resolve(refs)`` starts watching the Secrets ``refs`` name (and stops the others) and
    returns the values it has: ``{ref: value}`` for each ref whose Secret and key exist."""

    def __init__(self, ds, namespace: str, on_change: Callable[[], None], *, owned: bool = False) -> None:
        """``owned``: ``ds`` was made for this reader alone, and is closed with it."""
        self._ds, self._namespace, self._on_change, self._owned = ds, namespace, on_change, owned
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, str]] = {}  # secret name -> key -> value
        self._watches: dict[str, _SecretWatch] = {}

    def resolve(self, refs: Iterable[Ref]) -> dict[Ref, str]:
        refs = list(refs)
        self._want({r.name for r in refs})
        with self._lock:
            return {r: self._data[r.name][r.key] for r in refs
                    if r.key in self._data.get(r.name, {})}

    def settled(self) -> bool:
        """Every watched Secret has been read (or failed to be) at least once: only then does a
        missing one mean missing, and not "not read yet"."""
        return all(w.settled.is_set() for w in list(self._watches.values()))

    def _want(self, names: set[str]) -> None:
        for name in set(self._watches) - names:
            self._watches.pop(name).close()
            with self._lock:
                self._data.pop(name, None)
        for name in names - set(self._watches):
            self._watches[name] = _SecretWatch(self, name)

    def _store(self, name: str, data: dict[str, str] | None) -> bool:
        """Keep ``data`` (None: no such Secret); True (and ``on_change`` called) if it changed."""
        with self._lock:
            old = self._data.get(name)
            if data is None:
                self._data.pop(name, None)
            else:
                self._data[name] = data
        if old != data:
            log.info("BGP password secret changed",
                     extra={"secret": name, "namespace": self._namespace,
                            "keys": sorted(data or {}), "present": data is not None})
            self._on_change()
        return old != data

    def close(self) -> None:
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
        if self._owned:
            self._ds.close()


class NoSecrets:
    """Stands in for ``SecretWatcher`` where no Kubernetes API can be reached (etcd datastore
    without a kubeconfig): nothing resolves, and why is logged once per reference."""

    def __init__(self, reason: str) -> None:
        self._reason = reason
        self._told: set[tuple[str, str]] = set()

    def resolve(self, refs: Iterable[Ref]) -> dict[Ref, str]:
        for ref in refs:
            if (ref.name, ref.key) not in self._told:
                self._told.add((ref.name, ref.key))
                log.warning("BGP password cannot be read: %s", self._reason,
                            extra={"secret": ref.name, "key": ref.key})
        return {}

    def settled(self) -> bool:
        return True

    def close(self) -> None:
        pass


def decode(secret: dict) -> dict[str, str]:
    """A Secret's ``data`` as text (a key whose value is not base64 UTF-8 is left out, and logged)."""
    out = {}
    name = (secret.get("metadata") or {}).get("name", "")
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            log.warning("secret key is not base64-encoded UTF-8 text; ignored",
                        extra={"secret": name, "key": key})
    return out


class _SecretWatch(WatchThread):
    """List then watch one Secret by name, in a thread, until closed; retried with backoff."""

    def __init__(self, owner: SecretWatcher, name: str) -> None:
        self._owner, self._name = owner, name
        self._error = ""
        self.settled = threading.Event()
        super().__init__(f"secret-{name}")

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self._owner._namespace}/secrets"

    def _query(self) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self._name}"}

    def _run(self) -> None:
        delay = _RETRY[0]
        while not self._closed.is_set():
            try:
                revision = self._list()
                self._say("")
                delay = _RETRY[0]
                while not self._closed.is_set():
                    revision = self._watch(revision)
            except Compacted:
                continue  # list again
            except (DatastoreError, OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
                if self._closed.is_set():
                    return
                self._say(f"{type(exc).__name__}: {exc}")
                self._settle()
                self._closed.wait(delay)
                delay = min(delay * 2, _RETRY[1])

    def _settle(self) -> None:
        if not self.settled.is_set():
            self.settled.set()
            self._owner._on_change()

    def _say(self, error: str) -> None:
        if error != self._error:
            self._error = error
            if error:
                log.warning("cannot read BGP password secret; retrying",
                            extra={"secret": self._name, "namespace": self._owner._namespace,
                                   "error": error})

    def _list(self) -> int:
        listing = self._owner._ds._request("GET", self._path, self._query())
        items = [i for i in listing.get("items") or [] if i["metadata"]["name"] == self._name]
        first = not self.settled.is_set()
        self.settled.set()  # before the store: whoever it notifies sees this Secret read
        if not self._owner._store(self._name, decode(items[0]) if items else None) and first:
            self._owner._on_change()  # read and absent: the caller may now say so
        return int(listing["metadata"]["resourceVersion"])

    def _watch(self, revision: int) -> int:
        for event in self._events(self._owner._ds, self._path, self._query(), revision):
            obj = event.get("object") or {}
            revision = max(revision, int((obj.get("metadata") or {}).get("resourceVersion") or 0))
            if event.get("type") in ("ADDED", "MODIFIED"):
                self._owner._store(self._name, decode(obj))
            elif event.get("type") == "DELETED":
                self._owner._store(self._name, None)
        return revision


def for_agent(ds, kubeconfig: str | None, on_change: Callable[[], None],
              namespace: str | None = None) -> SecretWatcher | NoSecrets:
    """The agent's Secret reader: through ``ds`` when it is the Kubernetes datastore, else through
    a Kubernetes client of its own (``kubeconfig``, $KUBECONFIG or in-cluster), else ``NoSecrets``."""
    from datastore.kubernetes import KubernetesDatastore, _in_cluster, connect

    namespace = namespace or agent_namespace()
    if isinstance(ds, KubernetesDatastore):
        return SecretWatcher(ds, namespace, on_change)
    if not (kubeconfig or os.environ.get("KUBECONFIG") or _in_cluster()):
        return NoSecrets("the datastore is not Kubernetes and no Kubernetes API is configured "
                         "(KUBECONFIG) to read Secrets from")
    try:
        return SecretWatcher(connect(kubeconfig), namespace, on_change, owned=True)
    except ValueError as exc:
        return NoSecrets(str(exc))


__all__ = ["DEFAULT_NAMESPACE", "NoSecrets", "SecretWatcher", "agent_namespace", "decode", "for_agent"]
