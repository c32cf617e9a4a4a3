"""The datastore interface every backend implements, and its errors.

Synchronous and thread-safe: the agent runs the syncer in a thread; the CNI plugin and the CLI are
short-lived processes. Optimistic concurrency everywhere: ``update`` and ``delete`` with a revision are
compare-and-swap on ``metadata.resourceVersion`` and raise ``Conflict`` when it is stale.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from crds import Resource, kind_class

KEY_PREFIX = "/calico/resources/v3/projectcalico.org/"


class DatastoreError(Exception):
    """Base of all datastore errors."""


class NotFound(DatastoreError):
    pass


class AlreadyExists(DatastoreError):
    pass


class Conflict(DatastoreError):
    """A compare-and-swap failed: the stored revision is not the one the writer read."""


class Compacted(DatastoreError):
    """A watch asked for history that is gone (etcd compaction / Kubernetes 410 Gone): list again."""


class Unavailable(DatastoreError):
    """Transient: the backend could not be reached. Retry after a delay."""


class Forbidden(Unavailable):
    """The credentials may not do this (HTTP 401/403: RBAC). Retried like ``Unavailable`` (a role
    binding may be on its way), but a caller that has another way (e.g. wait for kubelet to
    register the Node instead of creating it) should take it."""


class Rejected(DatastoreError):
    """Permanent: the backend refused the request or the object as invalid (HTTP 400/415/422)."""


@dataclass(frozen=True)
class Listing:
    items: list[Resource]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    kind: str
    namespace: str | None
    name: str
    resource: Resource | None  # None for DELETED
    revision: int


def key_for(kind: str, name: str, namespace: str | None = None) -> str:
    """Calico's etcd layout: ``/calico/resources/v3/projectcalico.org/<plural>[/<ns>]/<name>``."""
    cls = kind_class(kind)
    if cls.NAMESPACED:
        if not namespace:
            raise ValueError(f"{cls.KIND} is namespaced: a namespace is required")
        return f"{KEY_PREFIX}{cls.PLURAL}/{namespace}/{name}"
    return f"{KEY_PREFIX}{cls.PLURAL}/{name}"


def prefix_for(kind: str) -> str:
    return f"{KEY_PREFIX}{kind_class(kind).PLURAL}/"


def parse_key(key: str) -> tuple[str, str | None, str]:
    """Inverse of key_for: (kind, namespace, name)."""
    rest = key.removeprefix(KEY_PREFIX)
    plural, _, tail = rest.partition("/")
    cls = kind_class(plural)
    if cls.NAMESPACED:
        namespace, _, name = tail.partition("/")
        return cls.KIND, namespace, name
    return cls.KIND, None, tail


class Datastore(ABC):
    @abstractmethod
    def get(self, kind: str, name: str, namespace: str | None = None) -> Resource: ...

    @abstractmethod
    def list(self, kind: str, namespace: str | None = None) -> Listing: ...

    @abstractmethod
    def create(self, resource: Resource) -> Resource:
        """Store a new resource; AlreadyExists if the key is taken. Returns it with its revision."""

    @abstractmethod
    def update(self, resource: Resource) -> Resource:
        """CAS on resource.metadata.resource_version (required); Conflict if stale, NotFound if gone."""

    @abstractmethod
    def delete(
        self, kind: str, name: str, namespace: str | None = None, *, revision: str | None = None
    ) -> Resource:
        """Delete and return the last stored value; with ``revision``, only if it still matches."""

    @abstractmethod
    def snapshot(self, kinds: Iterable[str]) -> Listing:
        """Every resource of these kinds at one consistent revision (the start of a watch)."""

    def snapshot_reduced(self, kinds: Iterable[str], reduce: Callable[[Resource], Any]) -> Listing:
        """``snapshot`` with each resource replaced by ``reduce(resource)`` (the syncer's consumer
        keeps a few fields of some kinds). A backend that decodes one resource at a time
        overrides this so that the models are never all held at once (100k IPAM blocks: ~140 MB
        of the agent's resident memory, which the allocator keeps once it has grown)."""
        listing = self.snapshot(kinds)
        return Listing([reduce(r) for r in listing.items], listing.revision)

    @abstractmethod
    def watch(
        self, kinds: Iterable[str], revision: int, stop: threading.Event
    ) -> Iterator[WatchEvent]:
        """Events after ``revision``, in order, until ``stop`` is set. Raises Compacted if too old."""

    def close(self) -> None:
        """Release connections."""

    def apply(self, resource: Resource) -> Resource:
        """Create, or update over whatever is stored (calicoctl apply): a read-modify-write with CAS."""
        try:
            return self.create(resource.with_revision(None))
        except AlreadyExists:
            current = self.get(resource.KIND, resource.name, resource.metadata.namespace)
            return self.update(resource.with_revision(current.metadata.resource_version))
