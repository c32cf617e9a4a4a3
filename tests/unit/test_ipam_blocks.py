"""Block arithmetic: names, FIFO allocation, release to the tail, attribute compaction."""
from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from ipam import affinity_name, block_name
from ipam import blocks

NET = ipaddress.ip_network("10.244.1.0/26")


def test_names_are_calico_style():
    assert block_name(NET) == "10-244-1-0-26"
    assert affinity_name("node1", NET) == "node1-10-244-1-0-26"


def test_new_block_hands_out_every_address_in_order():
    block = blocks.new_block(NET, "node1")
    assert block.spec.affinity == "host:node1"
    assert block.spec.unallocated == list(range(64))
    got = []
    for i in range(64):
        block, ip = blocks.allocate_one(block, f"h{i}", {})
        got.append(ip)
    assert got == list(NET)  # network and broadcast included, as Calico does
    assert block.spec.unallocated == []


def test_release_returns_ordinals_to_the_tail_and_compacts_attributes():
    block = blocks.new_block(NET, "n")
    for h in ("a", "b", "a", "c"):
        block, _ = blocks.allocate_one(block, h, {"pod": h})
    block, freed = blocks.release_handle(block, "a")
    assert freed == [NET[0], NET[2]]
    assert block.spec.unallocated[-2:] == [0, 2]
    assert [a.handle_id for a in block.spec.attributes] == ["b", "c"]
    assert block.spec.allocations[:4] == [None, 0, None, 1]
    assert blocks.handle_addresses(block, "c") == [NET[3]]
    same, none = blocks.release_handle(block, "a")
    assert none == [] and same is block


networks = st.builds(
    lambda addr, prefix: ipaddress.ip_network(f"10.0.{addr >> 8}.{addr & 255}/{prefix}", strict=False),
    st.integers(0, 1023), st.integers(20, 32))


@given(st.lists(networks, unique=True, max_size=30), networks)
def test_block_index_agrees_with_pairwise_comparison(existing, probe):
    index = blocks.BlockIndex(existing)
    assert index.overlaps(probe) == any(probe.overlaps(n) for n in existing)
    assert index.conflicted == {a for a in existing for b in existing if a != b and a.overlaps(b)}


def test_block_index_of_nothing():
    assert not blocks.BlockIndex([]).overlaps(NET)
    assert blocks.BlockIndex([NET]).conflicted == frozenset()
