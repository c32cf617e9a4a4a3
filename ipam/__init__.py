"""IP address management: pools split into blocks, blocks affine to nodes, handles, release.

I/O only through a ``Datastore`` (every write compare-and-swap on the revision); the block arithmetic
in ``ipam.blocks`` is purely computational. Calico's algorithm, minimal: assign from the node's affine
blocks, else claim the next free block of an eligible pool (pending affinity -> create block -> confirm),
else, unless IPAMConfig ``strictAffinity``, borrow an address from another node's block (the
allocation records ``node`` in its attributes, so the owner's agent routes it to the borrower).

    >>> from datastore.memory import MemoryDatastore
    >>> from crds import IPPool, ObjectMeta
    >>> ds = MemoryDatastore()
    >>> _ = ds.create(IPPool(metadata=ObjectMeta(name="p"), spec={"cidr": "10.244.0.0/16"}))
    >>> IPAM(ds).assign(node="node1", handle="k8s-pod-network.c1")
    IPv4Address('10.244.0.0')
"""
from ipam.allocator import IPAM
from ipam.blocks import affinity_name, block_name
from ipam.errors import IPAMError, NoEligiblePool, PoolExhausted, RetriesExhausted

__all__ = [
    "IPAM", "IPAMError", "NoEligiblePool", "PoolExhausted", "RetriesExhausted", "affinity_name",
    "block_name",
]
