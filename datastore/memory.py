"""In-memory datastore for unit tests: the same semantics as etcd (one global revision, CAS, watch
history that can be compacted)."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from crds import Resource, kind_class, load
from datastore.base import (
    AlreadyExists, Compacted, Conflict, Datastore, Listing, NotFound, WatchEvent, key_for,
    parse_key, prefix_for,
)


class MemoryDatastore(Datastore):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._revision = 0
        self._compacted = 0
        self._data: dict[str, tuple[dict, int]] = {}  # key -> (wire dict, mod revision)
        self._history: list[tuple[int, str, str, dict | None]] = []  # (rev, type, key, value)

    # -- reads --
    def get(self, kind: str, name: str, namespace: str | None = None) -> Resource:
        with self._cond:
            entry = self._data.get(key_for(kind, name, namespace))
            if entry is None:
                raise NotFound(f"{kind_class(kind).KIND} {name} not found")
            return _decode(*entry)

    def list(self, kind: str, namespace: str | None = None) -> Listing:
        prefix = prefix_for(kind) + (f"{namespace}/" if namespace else "")
        with self._cond:
            items = [_decode(v, r) for k, (v, r) in sorted(self._data.items()) if k.startswith(prefix)]
            return Listing(items, self._revision)

    def snapshot(self, kinds: Iterable[str]) -> Listing:
        prefixes = tuple(prefix_for(k) for k in kinds)
        with self._cond:
            items = [_decode(v, r) for k, (v, r) in sorted(self._data.items()) if k.startswith(prefixes)]
            return Listing(items, self._revision)

    # -- writes --
    def create(self, resource: Resource) -> Resource:
        key = _key(resource)
        with self._cond:
            if key in self._data:
                raise AlreadyExists(f"{resource.KIND} {resource.name} already exists")
            return self._put(key, resource, "ADDED")

    def update(self, resource: Resource) -> Resource:
        key = _key(resource)
        with self._cond:
            entry = self._data.get(key)
            if entry is None:
                raise NotFound(f"{resource.KIND} {resource.name} not found")
            if resource.metadata.resource_version != str(entry[1]):
                raise Conflict(
                    f"{resource.KIND} {resource.name}: revision {resource.metadata.resource_version}"
                    f" is stale (stored {entry[1]})"
                )
            return self._put(key, resource, "MODIFIED")

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               revision: str | None = None) -> Resource:
        key = key_for(kind, name, namespace)
        with self._cond:
            entry = self._data.get(key)
            if entry is None:
                raise NotFound(f"{kind_class(kind).KIND} {name} not found")
            if revision is not None and revision != str(entry[1]):
                raise Conflict(f"{kind} {name}: revision {revision} is stale (stored {entry[1]})")
            del self._data[key]
            self._revision += 1
            self._history.append((self._revision, "DELETED", key, None))
            self._cond.notify_all()
            return _decode(*entry)

    def _put(self, key: str, resource: Resource, type_: str) -> Resource:
        self._revision += 1
        value = resource.with_revision(None).to_dict()
        self._data[key] = (value, self._revision)
        self._history.append((self._revision, type_, key, value))
        self._cond.notify_all()
        return _decode(value, self._revision)

    # -- watch --
    def compact(self, revision: int) -> None:
        """Forget history up to ``revision`` (tests use this to exercise the relist path)."""
        with self._cond:
            self._compacted = revision
            self._history = [h for h in self._history if h[0] > revision]

    def watch(self, kinds: Iterable[str], revision: int,
              stop: threading.Event) -> Iterator[WatchEvent]:
        prefixes = tuple(prefix_for(k) for k in kinds)
        seen = revision
        while not stop.is_set():
            with self._cond:
                if seen < self._compacted:
                    raise Compacted(f"revision {seen} is compacted (oldest {self._compacted})")
                pending = [h for h in self._history if h[0] > seen and h[2].startswith(prefixes)]
                if not pending:
                    self._cond.wait(timeout=0.1)
                    continue
            for rev, type_, key, value in pending:
                seen = rev
                kind, namespace, name = parse_key(key)
                res = _decode(value, rev) if value is not None else None
                yield WatchEvent(type_, kind, namespace, name, res, rev)  # type: ignore[arg-type]


def _key(resource: Resource) -> str:
    return key_for(resource.KIND, resource.name, resource.metadata.namespace)


def _decode(value: dict, revision: int) -> Resource:
    return load(value).with_revision(str(revision))
