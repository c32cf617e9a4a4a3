"""The datastore conformance tests against a real etcd, plus what only etcd can show: Calico's key
layout, invalid data left by others, endpoint parsing, and connection loss."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator

import pytest
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client

import datastore
from crds import InvalidResource
from datastore.base import Unavailable
from datastore.etcdv3 import EtcdDatastore
from tests.datastore_conformance import (  # noqa: F401  (recorder is a fixture)
    DatastoreConformance, current_revision, pool, recorder, relabel, take, wep,
)
from tests.helpers import etcd_running, start_etcd, wait_for

POOLS = "/calico/resources/v3/projectcalico.org/ippools/"


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory) -> Iterator[str]:
    """One etcd for the module (starting one per test costs ~0.8 s); ``raw`` empties it per test."""
    with etcd_running(str(tmp_path_factory.mktemp("etcd") / "data")) as endpoint:
        yield endpoint


@pytest.fixture
def raw(etcd_url) -> Iterator[MultiEndpointEtcd3Client]:
    """A plain pyetcd client on the module's etcd, emptied of Calico keys: to see and plant keys."""
    host, port = etcd_url.removeprefix("http://").split(":")
    client = MultiEndpointEtcd3Client([Endpoint(host, int(port), secure=False)], timeout=5)
    try:
        client.delete_prefix("/calico/")
        yield client
    finally:
        client.close()


@pytest.fixture
def ds(etcd_url, raw) -> Iterator[EtcdDatastore]:
    store = EtcdDatastore(etcd_url)
    try:
        yield store
    finally:
        store.close()


class TestEtcdDatastore(DatastoreConformance):
    pass  # the module's ``ds`` fixture is the etcd backend


def test_calico_key_layout_and_stored_value(ds, raw):
    created = ds.create(wep("ns-a", "web"))
    value, meta = raw.get("/calico/resources/v3/projectcalico.org/workloadendpoints/ns-a/"
                          "n1-k8s-web-eth0")
    stored = json.loads(value)
    assert "resourceVersion" not in stored["metadata"]
    assert stored == created.with_revision(None).to_dict()
    assert created.metadata.resource_version == str(meta.mod_revision)


def test_invalid_data_is_skipped_with_a_warning(ds, raw, caplog):
    ds.create(pool("good"))
    raw.put(POOLS + "junk", "{not json")
    raw.put(POOLS + "bad-cidr", json.dumps(pool("x").to_dict() | {"spec": {"cidr": "10.0.0.1/8"}}))
    raw.put(POOLS + "renamed", json.dumps(pool("other").to_dict()))  # name differs from its key
    with caplog.at_level(logging.WARNING, logger="datastore.etcdv3"):
        assert [r.name for r in ds.list("IPPool").items] == ["good"]
        assert [r.name for r in ds.snapshot(["IPPool"]).items] == ["good"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for key in ("junk", "bad-cidr", "renamed"):
        assert POOLS + key in warned
    assert "spec.cidr" in warned
    with pytest.raises(InvalidResource, match="junk"):
        ds.get("IPPool", "junk")


def test_a_reduced_snapshot_is_the_snapshot_reduced_invalid_data_still_skipped(ds, raw):
    """Issue 8: the agent's syncer reads IPAM blocks reduced to a few fields as etcd's values are
    decoded (snapshot_reduced), instead of holding 100k models at once."""
    ds.create(pool("good"))
    ds.create(pool("other"))
    raw.put(POOLS + "junk", "{not json")
    full = ds.snapshot(["IPPool", "Node"])
    reduced = ds.snapshot_reduced(["IPPool", "Node"], lambda res: (res.key, res.spec.cidr))
    assert reduced.revision == full.revision
    assert reduced.items == [(r.key, r.spec.cidr) for r in full.items] and len(full.items) == 2


def test_watch_skips_invalid_data_and_drops_a_resource_made_invalid(ds, raw, caplog):
    start = current_revision(ds)
    raw.put(POOLS + "junk", "{not json")  # never valid: skipped
    good = ds.create(pool("good"))
    raw.put(POOLS + "good", "[]")  # was valid: gone from a re-list, so DELETED
    ds.create(pool("after"))
    with caplog.at_level(logging.WARNING, logger="datastore.etcdv3"):
        events = take(ds, ["IPPool"], start, 3)
    assert [(e.type, e.name) for e in events] == [
        ("ADDED", "good"), ("DELETED", "good"), ("ADDED", "after")]
    assert events[0].resource == good
    assert POOLS + "junk" in caplog.text and POOLS + "good" in caplog.text


def test_connect_with_several_endpoints(etcd_url, raw):
    ds = datastore.connect("etcdv3", etcd_endpoints=f"{etcd_url}, {etcd_url}")
    try:
        assert ds.create(pool("a")) == ds.get("IPPool", "a")
    finally:
        ds.close()


@pytest.mark.parametrize("endpoints", ["", "https://127.0.0.1:2379", "http://127.0.0.1"])
def test_bad_endpoints_are_rejected(endpoints):
    with pytest.raises(ValueError, match="etcd_endpoints"):
        EtcdDatastore(endpoints)


class WatchThread:
    """Follows ``ds.watch`` from ``created`` in a thread, recording event types, or the
    Unavailable that ended it; returns once the watch is established (one event seen)."""

    def __init__(self, ds: EtcdDatastore, created, stop: threading.Event) -> None:
        self.seen: list[str] = []
        self.failure: list[Unavailable] = []
        self.thread = threading.Thread(target=self._consume, args=(ds, created, stop))
        self.thread.start()
        ds.update(relabel(created, colour="blue"))
        wait_for(lambda: self.seen == ["MODIFIED"], timeout=5, what="the watch to be established")

    def _consume(self, ds: EtcdDatastore, created, stop: threading.Event) -> None:
        try:
            for event in ds.watch(["IPPool"], int(created.metadata.resource_version), stop):
                self.seen.append(event.type)
        except Unavailable as exc:
            self.failure.append(exc)


def test_connection_loss_is_unavailable(tmp_path):
    proc, endpoint = start_etcd(str(tmp_path / "etcd"))
    ds = EtcdDatastore(endpoint, timeout=2)
    stop = threading.Event()
    try:
        created = ds.create(pool("a"))
        watch = WatchThread(ds, created, stop)
        proc.kill()
        proc.wait()
        watch.thread.join(timeout=5)
        assert not watch.thread.is_alive() and watch.failure, "the watch must end with Unavailable"
        for call in (lambda: ds.get("IPPool", "a"), lambda: ds.list("IPPool"),
                     lambda: ds.create(pool("b")), lambda: ds.delete("IPPool", "a")):
            with pytest.raises(Unavailable):
                call()
        with pytest.raises(Unavailable):
            take(ds, ["IPPool"], 0, 1)
    finally:
        stop.set()
        ds.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_frozen_etcd_ends_the_watch_within_seconds(tmp_path):
    """Regression (issue 5, defect 11): a frozen or partitioned etcd (SIGSTOP here) kept a quiet
    watch looking healthy for 68 s -- gRPC's ping timeout, not the keepalive timeout, applied."""
    proc, endpoint = start_etcd(str(tmp_path / "etcd"))
    ds = EtcdDatastore(endpoint, timeout=2)
    stop = threading.Event()
    watch = None
    try:
        watch = WatchThread(ds, ds.create(pool("a")), stop)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: watch.failure, timeout=30, interval=0.2,
                 what="the watch to notice the frozen etcd")
        assert "ping timeout" in str(watch.failure[0])
    finally:
        stop.set()
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
        if watch is not None:
            watch.thread.join(timeout=10)
        ds.close()


def test_lists_larger_than_one_grpc_message(ds):
    """Regression: 10k IPAM blocks are ~10 MiB, over gRPC's 4 MiB message limit, and one range
    read failed with RESOURCE_EXHAUSTED: an agent could never get in sync. Lists are paged."""
    import ipaddress
    from concurrent.futures import ThreadPoolExecutor

    from ipam.blocks import new_block

    cidrs = list(ipaddress.ip_network("10.0.0.0/12").subnets(new_prefix=26))[:5000]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: ds.create(new_block(c, "n1")), cidrs))
    listing = ds.list("IPAMBlock")
    assert len(listing.items) == 5000
    assert sum(len(json.dumps(b.to_dict())) for b in listing.items) > 4 * 2**20
    assert {b.spec.cidr for b in listing.items} == {str(c) for c in cidrs}
    snap = ds.snapshot(["IPAMBlock", "IPPool"])
    assert len(snap.items) == 5000 and snap.revision == listing.revision
