"""etcd v3 backend: Calico's key layout, the memory backend's semantics, over pyetcd (gRPC).

Values are the resource's wire JSON without ``resourceVersion``; on read ``resourceVersion`` is the
key's ``mod_revision``. Every write is one etcd transaction, so create / update / delete are
compare-and-swap and a failed compare tells "gone" from "stale" in the same round trip.

pyetcd traps this module works around (checked against the installed pyetcd 0.0.1, etcd 3.4):

- ``Endpoint`` defaults to ``secure=True`` and refuses to build without TLS credentials.
- After one UNAVAILABLE / DEADLINE_EXCEEDED / INTERNAL error the endpoint is marked failed for
  ``time_retry`` (300 s by default); without ``failover=True`` every later call then raises a plain
  ``ValueError``. We use ``failover=True`` and a short ``time_retry``; when every endpoint is marked
  failed pyetcd raises ``NoServerAvailableError`` (mapped to ``Unavailable``).
- That same failure path closes the client's shared watch stream: every open watch's callback gets
  ``None``. We report it as ``Unavailable`` rather than as a quiet end of the watch.
- Errors without a mapping (e.g. OUT_OF_RANGE for a range read at a compacted revision) escape as
  raw ``grpc.RpcError``.
- ``watch_prefix``'s iterator blocks in ``queue.get()`` with no timeout, so it cannot honour a stop
  flag; we register a callback and poll our own queue instead.
- ``mod_revision(key) == 0`` is true for a missing key: a CAS with revision "0" would create it.
- A watch the server cancels for any reason other than compaction is dropped silently (pyetcd
  swallows ``canceled`` responses): the watch would just go quiet. etcd 3.4 does that only on
  auth changes or with require-leader metadata, neither of which we use.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from contextlib import contextmanager
from urllib.parse import urlsplit

import grpc
from pyetcd import exceptions as etcd_exc
from pyetcd import utils as pyetcd_utils
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client
from pyetcd.events import DeleteEvent
from pyetcd.watch import WatchResponse

from crds import InvalidResource, Resource, kind_class, load
from datastore.base import (
    KEY_PREFIX, AlreadyExists, Compacted, Conflict, Datastore, Listing, NotFound, Unavailable,
    WatchEvent, key_for, parse_key, prefix_for,
)

log = logging.getLogger(__name__)

_POLL = 0.1  # how often a watch looks at its stop flag, seconds
_PAGE = 500  # keys per range read (IPAM blocks are ~1 KiB each; a gRPC message is at most 4 MiB)
# Notice a silently dead (frozen, partitioned) etcd on a long-lived watch within ~15 s, so node
# status can say the datastore is unreachable. Measured with grpcio 1.85 against a SIGSTOPped etcd:
# the keepalive ping goes out after 10 s, but gRPC waits for its answer per ping_timeout_ms (one
# minute by default), not keepalive_timeout_ms: 68 s to notice, 13 s with the ping timeout set.
# And without max_pings_without_data=0 gRPC stops pinging an idle watch after two pings, so a watch
# quiet for long would never notice. (etcd refuses pings closer than 5 s apart.)
_GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


class EtcdDatastore(Datastore):
    """``EtcdDatastore("http://127.0.0.1:2379,http://10.0.0.2:2379")``; thread-safe."""

    def __init__(self, endpoints: str, *, timeout: float = 10.0, retry_after: float = 1.0) -> None:
        eps = [_endpoint(url, retry_after) for url in endpoints.split(",") if url.strip()]
        if not eps:
            raise ValueError("etcd_endpoints: no endpoint given")
        self._client = MultiEndpointEtcd3Client(eps, timeout=timeout, failover=True)
        self._tx = self._client.transactions
        self._watch_lock = threading.Lock()  # pyetcd creates its shared watcher lazily, unlocked

    # -- reads --
    def get(self, kind: str, name: str, namespace: str | None = None) -> Resource:
        """NotFound if absent; InvalidResource (naming the key) if what is stored does not load."""
        key = key_for(kind, name, namespace)
        with _etcd_errors("get", key):
            resp = self._client.get_response(key)
        if not resp.kvs:
            raise NotFound(f"{kind_class(kind).KIND} {name} not found")
        return _decode(resp.kvs[0])

    def list(self, kind: str, namespace: str | None = None) -> Listing:
        prefix = prefix_for(kind) + (f"{namespace}/" if namespace else "")
        kvs, revision = self._range(prefix)
        return Listing(_decode_valid(kvs), revision)

    def snapshot(self, kinds: Iterable[str]) -> Listing:
        """One range per kind, all read at the revision the first one saw."""
        kvs, revision = self._snapshot_kvs(kinds)
        return Listing(_decode_valid(kvs), revision)

    def snapshot_reduced(self, kinds: Iterable[str], reduce: Callable[[Resource], Any]) -> Listing:
        """As the base says: each value is decoded, reduced and dropped in turn."""
        kvs, revision = self._snapshot_kvs(kinds)
        return Listing(_decode_valid(kvs, reduce), revision)

    def _snapshot_kvs(self, kinds: Iterable[str]) -> tuple[list, int]:
        prefixes = sorted({prefix_for(k) for k in kinds})
        if not prefixes:
            with _etcd_errors("list", KEY_PREFIX):
                resp = self._client.get_prefix_response(KEY_PREFIX, count_only=True)
            return [], resp.header.revision
        kvs, revision = self._range(prefixes[0])
        for prefix in prefixes[1:]:
            kvs.extend(self._range(prefix, revision)[0])
        kvs.sort(key=lambda kv: kv.key)
        return kvs, revision

    def _range(self, prefix: str, revision: int | None = None) -> tuple[list, int]:
        """Every key under ``prefix`` at one revision (the current one, or ``revision``), read in
        pages: one gRPC message is at most 4 MiB, which 10k IPAM blocks already exceed."""
        start, end = prefix.encode(), pyetcd_utils.prefix_range_end(prefix.encode())
        kvs: list = []
        while True:
            with _etcd_errors("list", prefix):
                resp = self._client.get_range_response(start, end, limit=_PAGE, revision=revision)
            revision = revision or resp.header.revision  # every later page at the first one's
            kvs.extend(resp.kvs)
            if not resp.more:
                return kvs, revision
            start = resp.kvs[-1].key + b"\0"

    # -- writes --
    def create(self, resource: Resource) -> Resource:
        key, value = _key(resource), _encode(resource)
        with _etcd_errors("create", key):
            ok, responses = self._client.transaction(
                compare=[self._tx.version(key) == 0],
                success=[self._tx.put(key, json.dumps(value))],
                failure=[],
            )
        if not ok:
            raise AlreadyExists(f"{resource.KIND} {resource.name} already exists")
        return _stored(value, responses[0].response_put.header.revision)

    def update(self, resource: Resource) -> Resource:
        key, value = _key(resource), _encode(resource)
        revision = resource.metadata.resource_version
        ok, responses = self._cas(key, revision, self._tx.put(key, json.dumps(value)), "update")
        if not ok:
            self._raise_cas_failure(resource.KIND, resource.name, revision, responses)
        return _stored(value, responses[0].response_put.header.revision)

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               revision: str | None = None) -> Resource:
        """As the base says; if the deleted value does not load, InvalidResource (it is gone)."""
        key = key_for(kind, name, namespace)
        if revision is None:
            with _etcd_errors("delete", key):
                resp = self._client.delete(key, prev_kv=True, return_response=True)
            prev_kvs = resp.prev_kvs
        else:
            ok, responses = self._cas(key, revision, self._tx.delete(key, prev_kv=True), "delete")
            if not ok:
                self._raise_cas_failure(kind_class(kind).KIND, name, revision, responses)
            prev_kvs = responses[0].response_delete_range.prev_kvs
        if not prev_kvs:
            raise NotFound(f"{kind_class(kind).KIND} {name} not found")
        return _decode(prev_kvs[0])

    def _cas(self, key: str, revision: str | None, op, what: str):
        """``op`` if the key's mod_revision is ``revision``; else read the key (failure branch)."""
        with _etcd_errors(what, key):
            return self._client.transaction(
                compare=[self._tx.mod(key) == _revision_number(revision)],
                success=[op],
                failure=[self._tx.get(key)],
            )

    @staticmethod
    def _raise_cas_failure(kind: str, name: str, revision: str | None, responses) -> None:
        current = responses[0]  # the failure branch's get: [(value, KVMetadata)] or []
        if not current:
            raise NotFound(f"{kind} {name} not found")
        stored = current[0][1].mod_revision
        raise Conflict(f"{kind} {name}: revision {revision} is stale (stored {stored})")

    def compact(self, revision: int) -> None:
        """Compact etcd's history up to ``revision`` (tests use it to exercise the relist path)."""
        with _etcd_errors("compact", str(revision)):
            self._client.compact(revision, physical=True)

    # -- watch --
    def watch(self, kinds: Iterable[str], revision: int,
              stop: threading.Event) -> Iterator[WatchEvent]:
        prefixes = tuple(sorted({prefix_for(k) for k in kinds}))
        if not prefixes:
            stop.wait()
            return
        responses: queue.Queue = queue.Queue()
        watch_prefix = os.path.commonprefix(prefixes)  # one stream keeps cross-kind order
        with self._watch_lock, _etcd_errors("watch", watch_prefix):
            watch_id = self._client.add_watch_prefix_callback(
                watch_prefix, responses.put, start_revision=revision + 1
            )
        try:
            while not stop.is_set():
                try:
                    item = responses.get(timeout=_POLL)
                except queue.Empty:
                    continue
                yield from _watch_events(item, prefixes, revision)
        finally:
            self._cancel_watch(watch_id)

    def _cancel_watch(self, watch_id: int) -> None:
        try:
            self._client.cancel_watch(watch_id)
        except (etcd_exc.Etcd3Exception, grpc.RpcError) as exc:
            # The stream is already gone, and with it the watch: nothing left to cancel.
            log.debug("etcd watch cancel failed", extra={"watch_id": watch_id, "reason": str(exc)})

    def close(self) -> None:
        self._client.close()


def _watch_events(item, prefixes: tuple[str, ...], revision: int) -> Iterator[WatchEvent]:
    """Translate one callback item from pyetcd's watch thread into our events, or raise."""
    if isinstance(item, etcd_exc.RevisionCompactedError):
        raise Compacted(f"revision {revision} is compacted (oldest {item.compacted_revision})")
    if isinstance(item, grpc.RpcError):
        raise Unavailable(f"etcd watch: {item.code().name}: {item.details()}")
    if not isinstance(item, WatchResponse):
        # None: pyetcd closed the shared stream (close() or another call's connection failure).
        raise Unavailable(f"etcd watch stream ended ({item!r})")
    for event in item.events:
        key = event.key.decode()
        if not key.startswith(prefixes):
            continue
        kind, namespace, name = parse_key(key)
        if isinstance(event, DeleteEvent):
            yield WatchEvent("DELETED", kind, namespace, name, None, event.mod_revision)
            continue
        try:
            resource = _decode(event)
        except InvalidResource as exc:
            _warn_invalid(key, exc)
            if event.version > 1:
                # It was valid before: a re-list would no longer show it, so neither does the watch.
                yield WatchEvent("DELETED", kind, namespace, name, None, event.mod_revision)
            continue
        type_ = "ADDED" if event.create_revision == event.mod_revision else "MODIFIED"
        yield WatchEvent(type_, kind, namespace, name, resource, event.mod_revision)


@contextmanager
def _etcd_errors(what: str, key: str) -> Iterator[None]:
    """pyetcd's and gRPC's errors as ours: compaction as Compacted, the rest as Unavailable."""
    try:
        yield
    except etcd_exc.RevisionCompactedError as exc:
        raise Compacted(f"etcd {what} {key}: revision compacted") from exc
    except etcd_exc.Etcd3Exception as exc:
        raise Unavailable(f"etcd {what} {key}: {type(exc).__name__}: {exc}") from exc
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # range read at a compacted revision
            raise Compacted(f"etcd {what} {key}: {exc.details()}") from exc
        raise Unavailable(f"etcd {what} {key}: {exc.code().name}: {exc.details()}") from exc


def _endpoint(url: str, retry_after: float) -> Endpoint:
    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    if parts.scheme != "http":
        raise ValueError(f"etcd_endpoints: {url!r}: only http:// is supported (no TLS yet)")
    if not parts.hostname or not parts.port:
        raise ValueError(f"etcd_endpoints: {url!r}: expected http://HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Endpoint(host, parts.port, secure=False, time_retry=retry_after, opts=_GRPC_OPTIONS)


def _revision_number(revision: str | None) -> int:
    """A resourceVersion as etcd's mod_revision; -1 (never matches) when absent or malformed.

    Not 0: ``mod_revision == 0`` is true for a missing key, so a CAS would create it.
    """
    if revision and revision.isascii() and revision.isdecimal() and revision == str(int(revision)):
        return int(revision) or -1
    return -1


def _key(resource: Resource) -> str:
    return key_for(resource.KIND, resource.name, resource.metadata.namespace)


def _encode(resource: Resource) -> dict:
    return resource.with_revision(None).to_dict()


def _stored(value: dict, revision: int) -> Resource:
    if revision <= 0:
        raise AssertionError(f"Bug: etcd write returned revision {revision}")
    return load(value).with_revision(str(revision))


def _decode(kv) -> Resource:
    """A stored key-value as a resource; InvalidResource (naming the key) if it does not load."""
    key = kv.key.decode()
    try:
        resource = load(json.loads(kv.value))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and InvalidResource
        raise InvalidResource("?", None, key, str(exc)) from None
    if resource.key != parse_key(key):
        raise InvalidResource(resource.KIND, resource.name, key, "stored under another key")
    return resource.with_revision(str(kv.mod_revision))


def _decode_valid(kvs: list, reduce: Callable[[Resource], Any] | None = None) -> list:
    """The resources that load (each ``reduce``d, if given); ``kvs`` is emptied as it goes, so
    that each raw value is freed once decoded."""
    items = []
    for i, kv in enumerate(kvs):
        kvs[i] = None
        try:
            resource = _decode(kv)
        except InvalidResource as exc:
            _warn_invalid(kv.key.decode(errors="replace"), exc)
            continue
        items.append(resource if reduce is None else reduce(resource))
    return items


def _warn_invalid(key: str, exc: InvalidResource) -> None:
    log.warning("skipping invalid data in etcd at %s: %s", key, exc,
                extra={"key": key, "reason": str(exc)})
