"""Issue 8: the first reconcile of a node without tunnel pools cleans up what a past run may have
left (tunnel devices, tunnel addresses), and at 100k blocks must not read every block to find out
that there is nothing to release. Real kernel (a namespace), real nft; the datastore is the
in-memory one with a count of the block listings (our own seam)."""
from __future__ import annotations

import asyncio
import ipaddress

from crds import load
from datastore.memory import MemoryDatastore
from felix import cluster
from felix.encap import Encap
from ipam.allocator import IPAM

V3 = "projectcalico.org/v3"
ME = ipaddress.IPv4Interface("10.99.0.1/24")


class CountingDatastore(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.block_lists = 0

    def list(self, kind, namespace=None):
        self.block_lists += kind == "IPAMBlock"
        return super().list(kind, namespace)


def seeded(ds: MemoryDatastore) -> None:
    ds.create(load({"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "pool"},
                    "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}}))
    ds.create(load({"apiVersion": V3, "kind": "Node", "metadata": {"name": "n1"},
                    "spec": {"bgp": {"ipv4Address": str(ME)}}}))
    for i in range(3):
        ds.create(load({"apiVersion": V3, "kind": "IPAMBlock", "metadata": {"name": f"b{i}"},
                        "spec": {"cidr": f"10.244.{i}.0/26", "affinity": "host:n1"}}))


def state_of(ds: MemoryDatastore) -> cluster.ClusterState:
    from datastore.syncer import InSync, Update

    state = cluster.ClusterState()
    listing = ds.snapshot(cluster.WATCHED_KINDS)
    state.apply([Update(*r.key, cluster.reduce_resource(r)) for r in listing.items]
                + [InSync(listing.revision)])
    return state


def first_apply(ds: MemoryDatastore, ns: str):
    async def main():
        encap = Encap(ds, "n1", netns=ns)
        await encap.open()
        try:
            return await encap.apply(state_of(ds), ME)
        finally:
            await encap.close()

    return asyncio.run(main())


def test_nothing_to_release_reads_no_block(netns):
    """Regression: both tunnel handles were released through IPAM, a read of every block each."""
    ds = CountingDatastore()
    seeded(ds)
    result = first_apply(ds, netns("encap"))
    assert ds.block_lists == 0 and "vxlan" not in result.problems and "ipip" not in result.problems


def test_a_tunnel_address_left_by_a_past_run_is_still_released(netns):
    ds = CountingDatastore()
    seeded(ds)
    IPAM(ds).assign(node="n1", handle="ipip-tunnel-addr-n1", attrs={"node": "n1", "type": "ipip"})
    assert IPAM(ds).addresses("ipip-tunnel-addr-n1")
    first_apply(ds, netns("encap"))
    assert IPAM(ds).addresses("ipip-tunnel-addr-n1") == []
