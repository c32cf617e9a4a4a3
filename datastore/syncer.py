"""List-then-watch with an explicit in-sync marker, in a thread.

The consumer receives batches of ``Update`` items and one ``InSync`` after the first complete
snapshot. After a compaction (or any watch failure) the syncer takes a fresh snapshot and reports
deletions for keys that vanished meanwhile, so the consumer's view always converges.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crds import Resource
from datastore.base import Compacted, Datastore, DatastoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    kind: str
    namespace: str | None
    name: str
    resource: Resource | None  # None: deleted


@dataclass(frozen=True)
class InSync:
    revision: int


Batch = list[Update | InSync]


class Syncer:
    def __init__(self, ds: Datastore, kinds: Iterable[str], on_batch: Callable[[Batch], None],
                 retry_delay: float = 1.0) -> None:
        self._ds, self._kinds, self._on_batch = ds, tuple(kinds), on_batch
        self._retry_delay = retry_delay
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syncer", daemon=True)
        self._known: set[tuple[str, str | None, str]] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                revision = self._resync()
                self._follow(revision)
            except Compacted as exc:
                log.info("watch compacted, listing again", extra={"reason": str(exc)})
            except DatastoreError as exc:
                log.warning("datastore error, retrying", extra={"reason": str(exc)})
                self._stop.wait(self._retry_delay)

    def _resync(self) -> int:
        listing = self._ds.snapshot(self._kinds)
        batch: Batch = []
        now = set()
        for res in listing.items:
            key = res.key
            now.add(key)
            batch.append(Update(*key, res))
        batch.extend(Update(*key, None) for key in sorted(self._known - now, key=str))
        self._known = now
        batch.append(InSync(listing.revision))
        self._on_batch(batch)
        return listing.revision

    def _follow(self, revision: int) -> None:
        for event in self._ds.watch(self._kinds, revision, self._stop):
            key = (event.kind, event.namespace, event.name)
            if event.resource is None:
                self._known.discard(key)
            else:
                self._known.add(key)
            self._on_batch([Update(*key, event.resource)])
