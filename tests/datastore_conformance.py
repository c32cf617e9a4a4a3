"""Behaviour every datastore backend must show: the same tests run against memory and etcd.

A test module subclasses ``DatastoreConformance`` and provides a ``ds`` fixture returning a fresh,
empty backend that also has ``compact(revision)`` (memory and etcd both do). The class name has no
``Test`` prefix, so pytest collects it only through its subclasses.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest

from crds import API_VERSION, Resource, load
from datastore.base import (
    AlreadyExists, Compacted, Conflict, Datastore, Listing, NotFound, WatchEvent,
)
from datastore.syncer import Connection, InSync, Syncer, Update
from tests.helpers import wait_for

WEP = "WorkloadEndpoint"


def pool(name: str, cidr: str = "10.244.0.0/16", **labels: str) -> Resource:
    return load({"apiVersion": API_VERSION, "kind": "IPPool",
                 "metadata": {"name": name, "labels": labels}, "spec": {"cidr": cidr}})


def node(name: str) -> Resource:
    return load({"apiVersion": API_VERSION, "kind": "Node", "metadata": {"name": name},
                 "spec": {"bgp": {"ipv4Address": "192.168.0.1/24"}}})


def wep(namespace: str, pod: str) -> Resource:
    """A WorkloadEndpoint of ``pod`` on node n1, named as Calico always names one
    (``<node>-k8s-<pod>-<endpoint>``: a Kubernetes datastore can only derive that name)."""
    return load({"apiVersion": API_VERSION, "kind": WEP,
                 "metadata": {"name": wep_name("n1", pod), "namespace": namespace},
                 "spec": {"node": "n1", "pod": pod, "interfaceName": "cali0123456789a",
                          "ipNetworks": ["10.244.1.5/32"]}})


def wep_name(node: str, pod: str) -> str:
    return "-".join(part.replace("-", "--") for part in (node, "k8s", pod, "eth0"))


def relabel(res: Resource, **labels: str) -> Resource:
    """The same resource (keeping its resourceVersion) with new labels."""
    wire = res.to_dict()
    wire["metadata"]["labels"] = labels
    return load(wire)


def names(items: list[Resource]) -> list[str]:
    return [r.name for r in items]


def current_revision(ds: Datastore) -> int:
    return ds.snapshot([]).revision


def take(ds: Datastore, kinds: list[str], revision: int, n: int,
         timeout: float = 5.0) -> list[WatchEvent]:
    """The first ``n`` watch events after ``revision`` (fewer if ``timeout`` passes first)."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)  # a safety net against hanging, not a sync point
    timer.start()
    events: list[WatchEvent] = []
    try:
        with closing(ds.watch(kinds, revision, stop)) as stream:
            for event in stream:
                events.append(event)
                if len(events) == n:
                    break
    finally:
        timer.cancel()
        stop.set()
    return events


class GatedWatch(Datastore):
    """Delegates to ``inner``; ``watch`` starts only once ``gate`` is set (to time a compaction)."""

    def __init__(self, inner: Datastore) -> None:
        self.inner, self.gate = inner, threading.Event()

    def get(self, kind, name, namespace=None):
        return self.inner.get(kind, name, namespace)

    def list(self, kind, namespace=None):
        return self.inner.list(kind, namespace)

    def create(self, resource):
        return self.inner.create(resource)

    def update(self, resource):
        return self.inner.update(resource)

    def delete(self, kind, name, namespace=None, *, revision=None):
        return self.inner.delete(kind, name, namespace, revision=revision)

    def snapshot(self, kinds) -> Listing:
        return self.inner.snapshot(kinds)

    def watch(self, kinds, revision, stop) -> Iterator[WatchEvent]:
        while not self.gate.wait(0.05):
            if stop.is_set():
                return
        yield from self.inner.watch(kinds, revision, stop)


class Recorder:
    """Collects syncer batches and keeps the consumer's resulting view."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list] = []
        self.view: dict[tuple, Resource] = {}

    def __call__(self, batch: list) -> None:
        with self.lock:
            self.batches.append(batch)
            for item in batch:
                if isinstance(item, Update):
                    key = (item.kind, item.namespace, item.name)
                    if item.resource is None:
                        self.view.pop(key, None)
                    else:
                        self.view[key] = item.resource

    def in_syncs(self) -> int:
        with self.lock:
            return sum(isinstance(i, InSync) for b in self.batches for i in b)

    def view_names(self) -> set[str]:
        with self.lock:
            return {key[2] for key in self.view}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class DatastoreConformance:
    # etcd (and memory) deliver one stream in revision order across kinds; Kubernetes orders
    # events only within one resource type.
    ORDERED_ACROSS_KINDS = True

    def prepare_workload(self, ds, namespace: str, pod: str) -> None:
        """Make room for a WorkloadEndpoint of ``pod``: nothing in etcd; the Kubernetes
        datastore derives endpoints from Pods, so its subclass creates the Pod first."""

    # -- create / get / list --
    def test_create_get_list(self, ds):
        a = ds.create(pool("a", "10.1.0.0/16"))
        b = ds.create(pool("b", "10.2.0.0/16"))
        assert int(b.metadata.resource_version) > int(a.metadata.resource_version) > 0
        got = ds.get("IPPool", "a")
        assert got == a
        assert got.spec.cidr == "10.1.0.0/16"
        listing = ds.list("ippools")  # kinds resolve as calicoctl does
        assert names(listing.items) == ["a", "b"]
        assert listing.items == [a, b]
        assert listing.revision == int(b.metadata.resource_version)

    def test_create_ignores_a_given_revision(self, ds):
        created = ds.create(pool("a").with_revision("12345"))
        assert ds.get("IPPool", "a").metadata.resource_version == created.metadata.resource_version

    def test_duplicate_create_is_already_exists(self, ds):
        first = ds.create(pool("a", "10.1.0.0/16"))
        with pytest.raises(AlreadyExists):
            ds.create(pool("a", "10.9.0.0/16"))
        assert ds.get("IPPool", "a") == first

    def test_not_found(self, ds):
        with pytest.raises(NotFound):
            ds.get("IPPool", "missing")
        with pytest.raises(NotFound):
            ds.update(pool("missing").with_revision("1"))
        with pytest.raises(NotFound):
            ds.delete("IPPool", "missing")
        with pytest.raises(NotFound):
            ds.delete("IPPool", "missing", revision="1")
        assert ds.list("IPPool").items == []

    def test_update_cas(self, ds):
        v1 = ds.create(pool("a"))
        v2 = ds.update(relabel(v1, colour="blue"))
        assert int(v2.metadata.resource_version) > int(v1.metadata.resource_version)
        assert ds.get("IPPool", "a") == v2
        assert v2.metadata.labels == {"colour": "blue"}
        with pytest.raises(Conflict):
            ds.update(relabel(v1, colour="red"))  # stale: read before v2
        with pytest.raises(Conflict):  # revisions are compared as strings, as resourceVersion is
            ds.update(relabel(v2, colour="red").with_revision("0" + v2.metadata.resource_version))
        assert ds.get("IPPool", "a") == v2

    @pytest.mark.parametrize("revision", [None, "0", "-1", "abc", ""])
    def test_update_without_a_usable_revision_never_overwrites(self, ds, revision):
        stored = ds.create(pool("a"))
        with pytest.raises(Conflict):
            ds.update(relabel(stored, colour="red").with_revision(revision))
        assert ds.get("IPPool", "a") == stored
        # ... nor creates: mod_revision == 0 is true of a missing key in etcd.
        with pytest.raises(NotFound):
            ds.update(pool("b").with_revision(revision))
        with pytest.raises(NotFound):
            ds.get("IPPool", "b")

    def test_delete(self, ds):
        v1 = ds.create(pool("a"))
        v2 = ds.update(relabel(v1, colour="blue"))
        with pytest.raises(Conflict):
            ds.delete("IPPool", "a", revision=v1.metadata.resource_version)
        assert ds.get("IPPool", "a") == v2
        assert ds.delete("IPPool", "a", revision=v2.metadata.resource_version) == v2
        with pytest.raises(NotFound):
            ds.get("IPPool", "a")
        v3 = ds.create(pool("a"))
        assert ds.delete("IPPool", "a") == v3  # unconditional delete returns the last value
        assert ds.list("IPPool").items == []

    def test_apply_creates_then_updates(self, ds):
        first = ds.apply(pool("a"))
        second = ds.apply(relabel(first, colour="blue").with_revision(None))
        assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
        assert ds.get("IPPool", "a").metadata.labels == {"colour": "blue"}

    def test_racing_updates_from_the_same_read_exactly_one_wins(self, ds):
        ds.create(pool("race"))
        barrier = threading.Barrier(2)

        def write(read: Resource, writer: str) -> Resource | None:
            barrier.wait(timeout=5)
            try:
                return ds.update(relabel(read, writer=writer))
            except Conflict:
                return None

        with ThreadPoolExecutor(2) as pool_:
            for _ in range(10):
                read = ds.get("IPPool", "race")
                futures = [pool_.submit(write, read, w) for w in ("x", "y")]
                results = [f.result(timeout=10) for f in futures]
                winners = [r for r in results if r is not None]
                assert len(winners) == 1, results
                assert ds.get("IPPool", "race") == winners[0]

    # -- snapshot --
    def test_snapshot_across_kinds(self, ds):
        ds.create(pool("p1"))
        ds.create(node("n1"))
        self.prepare_workload(ds, "default", "w1")
        ds.create(wep("default", "w1"))
        last = ds.create(node("n2"))
        snap = ds.snapshot(["Node", "IPPool"])
        assert sorted((r.KIND, r.name) for r in snap.items) == [
            ("IPPool", "p1"), ("Node", "n1"), ("Node", "n2")]
        assert snap.revision == int(last.metadata.resource_version)
        assert ds.snapshot([]).items == []

    def test_snapshot_is_one_revision_under_concurrent_writes(self, ds):
        """A writer creates pool-i then node-i: a consistent snapshot never has node-i alone."""
        done = threading.Event()

        def writer() -> None:
            try:
                for i in range(60):
                    ds.create(pool(f"p{i}"))
                    ds.create(node(f"p{i}"))
            finally:
                done.set()

        with ThreadPoolExecutor(1) as ex:
            future = ex.submit(writer)
            while not done.is_set():
                snap = ds.snapshot(["IPPool", "Node"])
                pools = {r.name for r in snap.items if r.KIND == "IPPool"}
                nodes = {r.name for r in snap.items if r.KIND == "Node"}
                assert nodes <= pools, f"at {snap.revision}: nodes without pools {nodes - pools}"
                assert all(int(r.metadata.resource_version) <= snap.revision for r in snap.items)
            future.result()

    # -- watch --
    def test_watch_replays_in_order_after_a_revision(self, ds):
        start = current_revision(ds)
        v1 = ds.create(pool("a"))
        ds.create(node("n1"))  # another kind: not watched
        v2 = ds.update(relabel(v1, colour="blue"))
        ds.delete("IPPool", "a")
        events = take(ds, ["IPPool"], start, 3)
        assert [(e.type, e.kind, e.name) for e in events] == [
            ("ADDED", "IPPool", "a"), ("MODIFIED", "IPPool", "a"), ("DELETED", "IPPool", "a")]
        assert [e.resource for e in events] == [v1, v2, None]
        assert events[0].revision < events[1].revision < events[2].revision
        assert events[1].revision == int(v2.metadata.resource_version)
        # From a later revision only the later events come.
        later = take(ds, ["IPPool"], events[0].revision, 2)
        assert [e.type for e in later] == ["MODIFIED", "DELETED"]

    def test_watch_sees_live_events_across_kinds_in_order(self, ds):
        start = current_revision(ds)
        got: list[WatchEvent] = []
        stop = threading.Event()

        def consume() -> None:
            for event in ds.watch(["IPPool", "Node"], start, stop):
                got.append(event)

        thread = threading.Thread(target=consume)
        thread.start()
        try:
            ds.create(node("n1"))
            ds.create(pool("a"))
            ds.delete("Node", "n1")
            wait_for(lambda: len(got) == 3, timeout=5, what="three watch events")
        finally:
            stop.set()
            thread.join(timeout=5)
        assert not thread.is_alive()
        want = [("ADDED", "Node"), ("ADDED", "IPPool"), ("DELETED", "Node")]
        if self.ORDERED_ACROSS_KINDS:
            assert [(e.type, e.kind) for e in got] == want
        else:  # every event, each kind's in order
            assert sorted((e.type, e.kind) for e in got) == sorted(want)
            assert [e.type for e in got if e.kind == "Node"] == ["ADDED", "DELETED"]

    def test_watch_honours_stop_promptly(self, ds):
        stop = threading.Event()
        thread = threading.Thread(target=lambda: list(ds.watch(["IPPool"], 0, stop)))
        thread.start()
        ds.create(pool("a"))
        stop.set()
        started = time.monotonic()
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert time.monotonic() - started < 1.0

    def test_watch_after_compaction_raises_compacted(self, ds):
        start = current_revision(ds)
        v1 = ds.create(pool("a"))
        ds.update(relabel(v1, colour="blue"))
        last = ds.create(pool("b"))
        ds.compact(int(last.metadata.resource_version))
        with pytest.raises(Compacted):
            take(ds, ["IPPool"], start, 1)
        # Watching from the compaction point still works.
        ds.delete("IPPool", "b")
        assert [e.type for e in take(ds, ["IPPool"], int(last.metadata.resource_version), 1)] == [
            "DELETED"]

    # -- namespaced keys --
    def test_namespaced_workload_endpoints(self, ds):
        self.prepare_workload(ds, "ns-a", "web")
        self.prepare_workload(ds, "ns-b", "web")
        a = ds.create(wep("ns-a", "web"))
        b = ds.create(wep("ns-b", "web"))
        web = wep_name("n1", "web")
        assert ds.get(WEP, web, "ns-a") == a
        assert ds.get(WEP, web, "ns-b") == b
        assert a.metadata.namespace == "ns-a"
        assert names(ds.list(WEP, "ns-a").items) == [web]
        assert [r.metadata.namespace for r in ds.list(WEP).items] == ["ns-a", "ns-b"]
        with pytest.raises(ValueError):
            ds.get(WEP, web)  # a namespaced kind needs its namespace
        with pytest.raises(AlreadyExists):
            ds.create(wep("ns-a", "web"))
        start = current_revision(ds)
        ds.delete(WEP, web, "ns-a", revision=a.metadata.resource_version)
        assert names(ds.list(WEP).items) == [web]
        assert ds.get(WEP, web, "ns-b") == b
        [event] = take(ds, [WEP], start, 1)
        assert (event.type, event.namespace, event.name) == ("DELETED", "ns-a", web)

    # -- syncer --
    def test_syncer_snapshot_in_sync_then_live(self, ds, recorder):
        ds.create(pool("a"))
        ds.create(node("n1"))
        syncer = Syncer(ds, ["IPPool", "Node"], recorder, retry_delay=0.1)
        syncer.start()
        try:
            wait_for(lambda: recorder.in_syncs() == 1, timeout=5, what="in sync")
            first = recorder.batches[0]
            assert isinstance(first[0], Connection) and first[0].state == "connected"
            assert isinstance(first[-1], InSync)
            assert {(u.kind, u.name) for u in first[1:-1]} == {("IPPool", "a"), ("Node", "n1")}
            ds.create(pool("b"))
            ds.delete("Node", "n1")
            wait_for(lambda: recorder.view_names() == {"a", "b"}, timeout=5, what="live updates")
        finally:
            syncer.stop()
        assert recorder.in_syncs() == 1

    def test_syncer_relists_after_compaction_and_reports_deletions(self, ds, recorder):
        ds.create(pool("a"))
        ds.create(pool("b"))
        gated = GatedWatch(ds)
        # A long retry delay: only the Compacted path relists within the test's timeouts.
        syncer = Syncer(gated, ["IPPool"], recorder, retry_delay=60)
        syncer.start()
        try:
            wait_for(lambda: recorder.in_syncs() == 1, timeout=5, what="first in sync")
            assert recorder.view_names() == {"a", "b"}
            ds.delete("IPPool", "b")
            last = ds.create(pool("c"))
            ds.compact(int(last.metadata.resource_version))
            gated.gate.set()  # the watch now starts from a compacted revision
            wait_for(lambda: recorder.in_syncs() == 2, timeout=5, what="second in sync")
            relist = recorder.batches[-1]
            assert Update("IPPool", None, "b", None) in relist
            assert recorder.view_names() == {"a", "c"}
            ds.create(pool("d"))
            wait_for(lambda: recorder.view_names() == {"a", "c", "d"}, timeout=5, what="live")
        finally:
            syncer.stop()
