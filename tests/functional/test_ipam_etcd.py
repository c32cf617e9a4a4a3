"""IPAM against a real etcd: the basic flow and the concurrent-claim race, one client per thread."""
from __future__ import annotations

import ipaddress

import pytest

import datastore
from crds import IPAMConfig, IPPool, ObjectMeta
from ipam import IPAM, PoolExhausted
from tests.unit.test_ipam_race import check_overlap_race, check_race, run_overlap_race, run_race


@pytest.fixture
def clients(etcd_endpoint):
    opened = []

    def make():
        ds = datastore.connect("etcdv3", etcd_endpoints=etcd_endpoint)
        opened.append(ds)
        return ds
    yield make
    for ds in opened:
        ds.close()


def test_assign_claim_release_against_etcd(clients):
    ds = clients()
    ds.create(IPPool(metadata=ObjectMeta(name="p"), spec={"cidr": "10.66.0.0/29", "blockSize": 30}))
    ipam = IPAM(ds)
    a = [ipam.assign(node="node1", handle=f"a{i}") for i in range(4)]
    b = ipam.assign(node="node2", handle="b")
    assert a == list(ipaddress.ip_network("10.66.0.0/30"))
    assert b == ipaddress.ip_address("10.66.0.4")
    # No block left to claim: node1 borrows from node2's block (strictAffinity is off by default).
    assert ipam.assign(node="node1", handle="borrowed") == ipaddress.ip_address("10.66.0.5")
    ds.create(IPAMConfig(metadata=ObjectMeta(name="default"), spec={"strictAffinity": True}))
    with pytest.raises(PoolExhausted):
        ipam.assign(node="node1", handle="more")
    assert ipam.release("a1") == [a[1]]
    assert ipam.release("a1") == []
    assert ipam.assign(node="node1", handle="again") == a[1]
    states = {(x.spec.node, x.spec.state) for x in ds.list("BlockAffinity").items}
    assert states == {("node1", "confirmed"), ("node2", "confirmed")}


@pytest.mark.parametrize("nodes", [
    ["node1", "node2", "node3", "node4"],
    ["node1", "node1", "node2", "node3"],
])
def test_concurrent_claims_against_etcd(clients, nodes):
    per_thread = [clients() for _ in nodes]
    got = run_race(lambda i: per_thread[i], nodes)
    check_race(per_thread[0], nodes, got)


def test_concurrent_claims_from_overlapping_pools_against_etcd(clients):
    plan = [("node1", "outer"), ("node2", "inner"), ("node3", "outer"), ("node4", "inner")]
    per_thread = [clients() for _ in plan]
    check_overlap_race(per_thread[0], run_overlap_race(lambda i: per_thread[i], plan))


def test_assign_is_idempotent_per_handle_against_etcd(clients):
    ds = clients()
    ds.create(IPPool(metadata=ObjectMeta(name="p"), spec={"cidr": "10.66.0.0/24", "blockSize": 26}))
    ipam = IPAM(ds)
    first = ipam.assign(node="node1", handle="k8s-pod-network.c1")
    revision = ds.list("IPAMBlock").revision
    assert ipam.assign(node="node1", handle="k8s-pod-network.c1") == first
    assert ds.list("IPAMBlock").revision == revision, "a repeated assign wrote something"
