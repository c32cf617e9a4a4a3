"""List-then-watch with an explicit in-sync marker and the connection's state, in a thread.

The consumer receives batches of ``Update`` items, one ``InSync`` after the first complete snapshot,
and a ``Connection`` item whenever the datastore connection changes state (``connected``,
``unreachable``, ``failing``), with since when and why. After a compaction (or any watch failure)
the syncer takes a fresh snapshot and reports deletions for keys that vanished meanwhile, so the
consumer's view always converges.

Errors are classified once, here (kopf's temporary / permanent split):
- temporary: everything the datastore or the code below it can throw at us -- ``DatastoreError``
  (the datastore is unreachable) and any other exception (reported as ``failing``). The syncer
  relists after a jittered exponential backoff, counts the failure and reports it; the consumer
  keeps its last view, and a thread that dies quietly can never leave it on a frozen view.
- fatal: ``AssertionError`` -- a broken invariant ("Bug: ..."). Going on could do damage, so the
  syncer stops and hands the exception to ``on_fatal``; the agent exits non-zero and says why.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import tenacity

from crds import Resource
from datastore.base import Compacted, Datastore, DatastoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    kind: str
    namespace: str | None
    name: str
    resource: Resource | None  # None: deleted; else the resource, or what ``reduce`` made of it


@dataclass(frozen=True)
class InSync:
    revision: int


@dataclass(frozen=True)
class Connection:
    """``state``: connected | unreachable (a DatastoreError) | failing (anything else)."""

    state: str
    since: float  # wall clock, seconds since the epoch
    reason: str = ""
    errors: int = 0  # temporary failures since the syncer started


Batch = list[Update | InSync | Connection]


def _same(resource: Resource) -> Resource:
    return resource


def is_fatal(exc: BaseException) -> bool:
    """A broken invariant is fatal; every other failure is temporary (retried with backoff)."""
    return isinstance(exc, AssertionError)


class Syncer:
    def __init__(self, ds: Datastore, kinds: Iterable[str], on_batch: Callable[[Batch], None],
                 retry_delay: float = 1.0, max_retry_delay: float = 30.0,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 reduce: Callable[[Resource], Any] | None = None) -> None:
        """``reduce``: applied to every resource read, in the syncer's thread, before the consumer
        sees it (the agent keeps only a few fields of an IPAM block). A snapshot is reduced as the
        datastore decodes it (``snapshot_reduced``): on etcd, 100k block models are never all
        held at once."""
        self._ds, self._kinds, self._on_batch = ds, tuple(kinds), on_batch
        self._reduce = reduce or _same
        self._retry_delay, self._max_retry_delay = retry_delay, max_retry_delay
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syncer", daemon=True)
        self._known: set[tuple[str, str | None, str]] = set()
        self._state = ""
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                revision = self._resync_with_retries()
                if revision is None:
                    return  # stopped while retrying
                try:
                    self._follow(revision)
                except Compacted as exc:
                    log.info("watch compacted, listing again", extra={"reason": str(exc)})
                except Exception as exc:  # noqa: BLE001 - classified: temporary unless is_fatal
                    if is_fatal(exc):
                        raise
                    self._failed(exc)  # then relist at once; a failing relist backs off
        except Exception as exc:  # noqa: BLE001 - only fatal ones get here
            log.critical("syncer stopped by a fatal error", exc_info=True)
            if self._on_fatal is None:
                raise
            self._on_fatal(exc)

    def _resync_with_retries(self) -> int | None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: not is_fatal(exc)),
            wait=tenacity.wait_random_exponential(multiplier=self._retry_delay,
                                                  max=self._max_retry_delay),
            stop=tenacity.stop_when_event_set(self._stop),
            sleep=self._stop.wait,
            before_sleep=lambda state: self._failed(state.outcome.exception()),
            retry_error_callback=lambda state: None,  # stopped: give up quietly
            reraise=True,
        )
        return retrying(self._resync)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        state = "unreachable" if isinstance(exc, DatastoreError) else "failing"
        reason = str(exc) or type(exc).__name__
        if state != self._state:
            log.warning("datastore %s: %s", state, reason, exc_info=state == "failing")
            self._report(state, f"{type(exc).__name__}: {reason}" if state == "failing" else reason)
        else:
            log.debug("datastore still %s: %s", state, reason)

    def _report(self, state: str, reason: str = "", batch: Batch | None = None) -> None:
        """Send ``batch`` (may be empty), preceded by a Connection item when the state changed."""
        items: Batch = []
        if state != self._state:
            self._state = state
            items.append(Connection(state, time.time(), reason, self.errors))
        items.extend(batch or [])
        if items:
            self._on_batch(items)

    def _resync(self) -> int:
        reduce = self._reduce
        # decoded and reduced one at a time, where the datastore can: no 100k models at once
        listing = self._ds.snapshot_reduced(self._kinds, lambda res: (res.key, reduce(res)))
        batch: Batch = []
        now = set()
        for key, item in listing.items:
            now.add(key)
            batch.append(Update(*key, item))
        batch.extend(Update(*key, None) for key in sorted(self._known - now, key=str))
        self._known = now
        batch.append(InSync(listing.revision))
        self._report("connected", batch=batch)
        return listing.revision

    def _follow(self, revision: int) -> None:
        for event in self._ds.watch(self._kinds, revision, self._stop):
            key = (event.kind, event.namespace, event.name)
            if event.resource is None:
                self._known.discard(key)
            else:
                self._known.add(key)
            resource = None if event.resource is None else self._reduce(event.resource)
            self._on_batch([Update(*key, resource)])
