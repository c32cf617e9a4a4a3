"""Block arithmetic on IPAMBlock specs: purely computational, no I/O.

An IPAMBlock holds one slot per address (``allocations[ordinal]`` -> index into ``attributes``, or
None when free), a FIFO of free ordinals (``unallocated``) and the attributes (handle + secondary).
Every address of the block is handed out, network and broadcast addresses included, as Calico does.
"""
from __future__ import annotations

import bisect
import ipaddress
import itertools
from collections.abc import Iterable, Iterator

from crds import BlockAffinity, IPAMBlock, IPPool, ObjectMeta
from crds.models import AllocationAttribute, BlockAffinitySpec, IPAMBlockSpec


def block_name(cidr: ipaddress.IPv4Network) -> str:
    """Calico's block name: ``10.244.1.0/26`` -> ``10-244-1-0-26``."""
    return f"{str(cidr.network_address).replace('.', '-')}-{cidr.prefixlen}"


def affinity_name(node: str, cidr: ipaddress.IPv4Network) -> str:
    """Calico's BlockAffinity name: ``<node>-<cidr with . and / as ->``."""
    return f"{node}-{block_name(cidr)}"


def candidate_blocks(pool: IPPool) -> Iterator[ipaddress.IPv4Network]:
    """The pool's blocks in address order (lazily: a /8 pool has 2^18 /26 blocks)."""
    return pool.spec.network.subnets(new_prefix=pool.spec.block_size)


class BlockIndex:
    """The address ranges existing blocks cover, for overlap questions in O(log n) each.

    Blocks of different pools can nest (a datastore may hold overlapping pools, written by another
    tool), so comparing CIDRs for equality is not enough. Ranges sorted by start, with a running
    maximum of their ends, answer "does any block overlap this network" with one bisect.

    >>> idx = BlockIndex([ipaddress.ip_network("10.80.0.0/24"), ipaddress.ip_network("10.80.0.0/26")])
    >>> idx.overlaps(ipaddress.ip_network("10.80.0.64/26")), idx.overlaps(ipaddress.ip_network("10.80.1.0/26"))
    (True, False)
    >>> sorted(map(str, idx.conflicted))
    ['10.80.0.0/24', '10.80.0.0/26']
    """

    def __init__(self, nets: Iterable[ipaddress.IPv4Network]) -> None:
        spans = sorted((int(n.network_address), int(n.broadcast_address), n) for n in nets)
        self._starts = [start for start, _, _ in spans]
        self._reach = list(itertools.accumulate((end for _, end, _ in spans), max))
        self.conflicted = _conflicted(spans)

    def overlaps(self, net: ipaddress.IPv4Network) -> bool:
        i = bisect.bisect_right(self._starts, int(net.broadcast_address))
        return i > 0 and self._reach[i - 1] >= int(net.network_address)


def _conflicted(spans: list[tuple[int, int, ipaddress.IPv4Network]]
                ) -> frozenset[ipaddress.IPv4Network]:
    """Every network that overlaps another: one sweep over spans sorted by start."""
    out: set[ipaddress.IPv4Network] = set()
    reach, widest = -1, None  # the furthest end so far, and the network that reaches it
    for start, end, net in spans:
        if start <= reach:
            out |= {net, widest}
        if end > reach:
            reach, widest = end, net
    return frozenset(out)


def new_block(cidr: ipaddress.IPv4Network, node: str) -> IPAMBlock:
    size = cidr.num_addresses
    spec = IPAMBlockSpec(cidr=str(cidr), affinity=f"host:{node}", allocations=[None] * size,
                         unallocated=list(range(size)))
    return IPAMBlock(metadata=ObjectMeta(name=block_name(cidr)), spec=spec)


def pending_affinity(node: str, cidr: ipaddress.IPv4Network) -> BlockAffinity:
    spec = BlockAffinitySpec(state="pending", node=node, cidr=str(cidr))
    return BlockAffinity(metadata=ObjectMeta(name=affinity_name(node, cidr)), spec=spec)


def allocate_one(block: IPAMBlock, handle: str, attrs: dict[str, str]
                 ) -> tuple[IPAMBlock, ipaddress.IPv4Address]:
    """Take the head of the free FIFO; return the updated block (same revision) and the address."""
    spec = block.spec
    if not spec.unallocated:
        raise AssertionError(f"Bug: allocate_one on full block {block.name}")
    ordinal, rest = spec.unallocated[0], spec.unallocated[1:]
    attributes = [*spec.attributes, AllocationAttribute(handle_id=handle, secondary=dict(attrs))]
    allocations = list(spec.allocations)
    allocations[ordinal] = len(attributes) - 1
    new_spec = spec.model_copy(update={
        "allocations": allocations, "unallocated": rest, "attributes": attributes,
        "sequence_number": spec.sequence_number + 1,
    })
    return block.model_copy(update={"spec": new_spec}), address_of(block, ordinal)


def release_handle(block: IPAMBlock, handle: str
                   ) -> tuple[IPAMBlock, list[ipaddress.IPv4Address]]:
    """Free every ordinal held by ``handle``: to the tail of the FIFO; drop unused attributes."""
    spec = block.spec
    held = {i for i, a in enumerate(spec.attributes) if a.handle_id == handle}
    ordinals = [o for o, idx in enumerate(spec.allocations) if idx in held]
    if not ordinals:
        return block, []
    allocations = [None if idx in held else idx for idx in spec.allocations]
    allocations, attributes = _compact(allocations, spec.attributes)
    new_spec = spec.model_copy(update={
        "allocations": allocations, "unallocated": [*spec.unallocated, *ordinals],
        "attributes": attributes, "sequence_number": spec.sequence_number + 1,
    })
    return block.model_copy(update={"spec": new_spec}), [address_of(block, o) for o in ordinals]


def _compact(allocations: list[int | None], attributes: list[AllocationAttribute]
             ) -> tuple[list[int | None], list[AllocationAttribute]]:
    """Remove attributes no allocation refers to, renumbering the references."""
    used = sorted({idx for idx in allocations if idx is not None})
    renumber = {old: new for new, old in enumerate(used)}
    return ([None if i is None else renumber[i] for i in allocations],
            [attributes[old] for old in used])


def handle_addresses(block: IPAMBlock, handle: str) -> list[ipaddress.IPv4Address]:
    held = {i for i, a in enumerate(block.spec.attributes) if a.handle_id == handle}
    return [address_of(block, o) for o, idx in enumerate(block.spec.allocations) if idx in held]


def address_of(block: IPAMBlock, ordinal: int) -> ipaddress.IPv4Address:
    return block.spec.network.network_address + ordinal
