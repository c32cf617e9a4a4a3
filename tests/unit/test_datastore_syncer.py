"""The syncer's error classification and connection state (issue 5, defects 11 and 12).

Faults are injected at our own seam: a MemoryDatastore whose snapshot/watch raise on cue.
"""
from __future__ import annotations

import threading

from crds import load
from datastore.base import Unavailable
from datastore.memory import MemoryDatastore
from datastore.syncer import Connection, InSync, Syncer, Update
from tests.helpers import wait_for


def pool(name: str):
    return load({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
                 "spec": {"cidr": f"10.{len(name) + 10}.0.0/16"}})


class Faulty(MemoryDatastore):
    """Raises the queued exceptions, one per call, from snapshot() and watch()."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_faults: list[BaseException] = []
        self.watch_faults: list[BaseException] = []

    def snapshot(self, kinds):
        if self.snapshot_faults:
            raise self.snapshot_faults.pop(0)
        return super().snapshot(kinds)

    def watch(self, kinds, revision, stop):
        if self.watch_faults:
            raise self.watch_faults.pop(0)
        yield from super().watch(kinds, revision, stop)


class Recorder:
    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def __call__(self, batch) -> None:
        with self.lock:
            self.items.extend(batch)

    def of(self, cls) -> list:
        with self.lock:
            return [i for i in self.items if isinstance(i, cls)]


def run(ds, rec, **kw) -> Syncer:
    syncer = Syncer(ds, ["IPPool"], rec, retry_delay=0.01, max_retry_delay=0.05, **kw)
    syncer.start()
    return syncer


def test_unreachable_datastore_is_reported_with_since_and_then_connected():
    ds, rec = Faulty(), Recorder()
    ds.create(pool("a"))
    ds.snapshot_faults = [Unavailable("etcd down"), Unavailable("etcd down")]
    syncer = run(ds, rec)
    try:
        wait_for(lambda: rec.of(InSync), timeout=5, what="in sync after the outage")
        states = [(c.state, c.reason) for c in rec.of(Connection)]
        assert states == [("unreachable", "etcd down"), ("connected", "")], states
        assert syncer.errors == 2 and rec.of(Connection)[-1].errors == 2
        assert rec.of(Connection)[0].since <= rec.of(Connection)[1].since
    finally:
        syncer.stop()


def test_an_unexpected_exception_does_not_kill_the_syncer():
    """Regression: any exception other than a DatastoreError ended the syncer thread quietly, and
    the agent ran on a frozen view from then on."""
    ds, rec = Faulty(), Recorder()
    ds.create(pool("a"))
    ds.watch_faults = [RuntimeError("decoder blew up")]
    fatal: list = []
    syncer = run(ds, rec, on_fatal=fatal.append)
    try:
        wait_for(lambda: len(rec.of(InSync)) == 2, timeout=5, what="a relist after the failure")
        assert [c.state for c in rec.of(Connection)] == ["connected", "failing", "connected"]
        assert "RuntimeError: decoder blew up" in rec.of(Connection)[1].reason
        ds.create(pool("bb"))  # and it follows live changes again
        wait_for(lambda: any(u.name == "bb" for u in rec.of(Update)), timeout=5, what="live update")
        assert fatal == [] and syncer.errors == 1
    finally:
        syncer.stop()


def test_a_broken_invariant_is_fatal_and_handed_to_the_agent():
    ds, rec = Faulty(), Recorder()
    ds.snapshot_faults = [AssertionError("Bug: impossible")]
    fatal: list = []
    syncer = run(ds, rec, on_fatal=fatal.append)
    try:
        wait_for(lambda: fatal, timeout=5, what="the fatal error reported")
        assert isinstance(fatal[0], AssertionError) and rec.of(InSync) == []
        syncer._thread.join(5)
        assert not syncer._thread.is_alive()
    finally:
        syncer.stop()


def test_stop_ends_the_retries():
    ds, rec = Faulty(), Recorder()
    ds.snapshot_faults = [Unavailable("down")] * 1000
    syncer = Syncer(ds, ["IPPool"], rec, retry_delay=5, max_retry_delay=60)
    syncer.start()
    wait_for(lambda: rec.of(Connection), timeout=5, what="the first failure reported")
    syncer.stop()
    assert not syncer._thread.is_alive()


def test_reduce_is_applied_to_every_resource_of_the_snapshot_and_the_watch():
    """Issue 8: the agent keeps a few fields of each IPAM block; the syncer hands it those, so the
    models are not all held at once (100k blocks were ~600 MB)."""
    ds, rec = MemoryDatastore(), Recorder()
    ds.create(pool("listed"))
    syncer = run(ds, rec, reduce=lambda res: ("reduced", res.name))
    try:
        wait_for(lambda: rec.of(InSync))
        ds.create(pool("watched"))
        wait_for(lambda: len(rec.of(Update)) == 2)
        ds.delete("IPPool", "watched")
        wait_for(lambda: len(rec.of(Update)) == 3)
    finally:
        syncer.stop()
    assert [u.resource for u in rec.of(Update)] == [
        ("reduced", "listed"), ("reduced", "watched"), None]
