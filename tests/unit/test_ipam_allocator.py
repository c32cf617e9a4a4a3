"""IPAM against the in-memory datastore: claims, exhaustion, release, and a no-duplicates property."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crds import IPAMConfig, IPPool, ObjectMeta
from datastore.memory import MemoryDatastore
from ipam import IPAM, IPAMError, NoEligiblePool, PoolExhausted, blocks


def make_ds(*pools: tuple[str, str, int], **extra) -> MemoryDatastore:
    ds = MemoryDatastore()
    for name, cidr, block_size in pools:
        spec = {"cidr": cidr, "blockSize": block_size, **extra.get(name, {})}
        ds.create(IPPool(metadata=ObjectMeta(name=name), spec=spec))
    return ds


def affinities(ds):
    return {(a.spec.node, a.spec.cidr, a.spec.state) for a in ds.list("BlockAffinity").items}


def test_assigns_distinct_ips_from_one_claimed_block():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    ipam = IPAM(ds)
    ips = [ipam.assign(node="node1", handle=f"h{i}") for i in range(10)]
    assert len(set(ips)) == 10
    assert all(ip in ipaddress.ip_network("10.244.0.0/26") for ip in ips)
    [block] = ipam.blocks()
    assert block.name == "10-244-0-0-26" and block.spec.affinity == "host:node1"
    assert affinities(ds) == {("node1", "10.244.0.0/26", "confirmed")}


def test_second_node_gets_a_different_block():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    ipam = IPAM(ds)
    a = ipam.assign(node="node1", handle="a")
    b = ipam.assign(node="node2", handle="b")
    assert a in ipaddress.ip_network("10.244.0.0/26")
    assert b in ipaddress.ip_network("10.244.0.64/26")
    assert {blk.spec.affine_node for blk in ipam.blocks()} == {"node1", "node2"}


def test_full_block_claims_a_new_block():
    ds = make_ds(("default", "10.244.0.0/24", 30))
    ipam = IPAM(ds)
    ips = [ipam.assign(node="n", handle=f"h{i}") for i in range(6)]
    assert len(set(ips)) == 6
    assert sorted(b.spec.cidr for b in ipam.blocks()) == ["10.244.0.0/30", "10.244.0.4/30"]


def strict(ds, on: bool = True) -> None:
    ds.create(IPAMConfig(metadata=ObjectMeta(name="default"), spec={"strictAffinity": on}))


def node_of(ds, ip) -> str:
    """The ``node`` attribute recorded for the allocation of ``ip``."""
    for b in ds.list("IPAMBlock").items:
        if ip in b.spec.network:
            idx = b.spec.allocations[int(ip) - int(b.spec.network.network_address)]
            return b.spec.attributes[idx].secondary["node"]
    raise KeyError(ip)


def test_pool_exhausted_writes_nothing():
    ds = make_ds(("tiny", "10.9.0.0/29", 30))
    strict(ds)  # no borrowing: node a's full block is the end for a
    ipam = IPAM(ds)
    ipam.assign(node="a", handle="x")
    ipam.assign(node="b", handle="y")
    for i in range(3):
        ipam.assign(node="a", handle=f"a{i}")
    before = ds.snapshot(["IPAMBlock", "BlockAffinity"])
    with pytest.raises(PoolExhausted, match="strictAffinity"):
        ipam.assign(node="a", handle="z")
    with pytest.raises(PoolExhausted):
        ipam.assign(node="c", handle="z")
    assert ds.snapshot(["IPAMBlock", "BlockAffinity"]) == before


def test_borrows_from_another_nodes_block_when_none_is_left():
    ds = make_ds(("tiny", "10.9.0.0/29", 30))
    ipam = IPAM(ds)
    a = ipam.assign(node="a", handle="x")
    ipam.assign(node="b", handle="y")
    borrowed = [ipam.assign(node="c", handle=f"c{i}") for i in range(3)]
    # The lowest block first (a's, 3 free), then b's; no new block, no affinity for c.
    assert borrowed == [ipaddress.ip_address(f"10.9.0.{i}") for i in (1, 2, 3)]
    assert {blk.spec.affine_node for blk in ipam.blocks()} == {"a", "b"}
    assert all(node_of(ds, ip) == "c" for ip in borrowed) and node_of(ds, a) == "a"
    assert ipam.assign(node="c", handle="c3") == ipaddress.ip_address("10.9.0.5")
    assert ipam.release("c0") == [borrowed[0]]  # a borrowed address is released like any other
    assert ipam.assign(node="a", handle="again") == borrowed[0]


def test_borrows_only_when_no_block_can_be_claimed():
    ds = make_ds(("p", "10.9.0.0/28", 30))
    ipam = IPAM(ds)
    ipam.assign(node="a", handle="x")
    assert ipam.assign(node="b", handle="y") in ipaddress.ip_network("10.9.0.4/30")


def test_pool_exhausted_when_every_block_is_full():
    ds = make_ds(("tiny", "10.9.0.0/29", 30))
    ipam = IPAM(ds)
    for i in range(8):
        ipam.assign(node="a" if i < 4 else "b", handle=f"h{i}")
    with pytest.raises(PoolExhausted, match="nor a free address"):
        ipam.assign(node="c", handle="z")


def test_a_blocks_own_strict_affinity_is_never_borrowed_from():
    ds = make_ds(("tiny", "10.9.0.0/30", 30))
    ipam = IPAM(ds)
    ipam.assign(node="a", handle="x")
    [blk] = ipam.blocks()
    ds.update(blk.model_copy(update={"spec": blk.spec.model_copy(update={"strict_affinity": True})}))
    with pytest.raises(PoolExhausted):
        ipam.assign(node="c", handle="z")
    strict(ds, False)
    with pytest.raises(PoolExhausted):
        ipam.assign(node="c", handle="z")


def test_the_node_attribute_is_always_recorded():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    ipam = IPAM(ds)
    ip = ipam.assign(node="n1", handle="h", attrs={"pod": "p", "node": "elsewhere"})
    assert node_of(ds, ip) == "n1"


def test_release_then_reassign_uses_the_fifo_tail():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    ipam = IPAM(ds)
    first = ipam.assign(node="n", handle="h1")
    ipam.assign(node="n", handle="h2")
    assert ipam.release("h1") == [first]
    assert ipam.addresses("h1") == []
    # The freed ordinal went to the tail: the next 62 assigns come from untouched addresses first.
    nxt = [ipam.assign(node="n", handle=f"x{i}") for i in range(62)]
    assert first not in nxt
    assert ipam.assign(node="n", handle="last") == first


def test_release_is_idempotent():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    ipam = IPAM(ds)
    ip = ipam.assign(node="n", handle="h", attrs={"pod": "p"})
    assert ipam.release("h") == [ip]
    assert ipam.release("h") == []
    assert ipam.release("never-seen") == []


def test_named_and_disabled_pools():
    ds = make_ds(("a", "10.1.0.0/16", 26), ("b", "10.2.0.0/16", 26), ("off", "10.3.0.0/16", 26),
                 off={"disabled": True})
    ipam = IPAM(ds)
    assert ipam.assign(node="n", handle="h", pools=["b"]) in ipaddress.ip_network("10.2.0.0/16")
    with pytest.raises(NoEligiblePool, match="nope"):
        ipam.assign(node="n", handle="h", pools=["nope"])
    with pytest.raises(NoEligiblePool, match="off: disabled"):
        ipam.assign(node="n", handle="h", pools=["off"])
    # The node's existing block in pool b is not used when only pool a is eligible.
    assert ipam.assign(node="n", handle="h2", pools=["a"]) in ipaddress.ip_network("10.1.0.0/16")


def test_no_pools_and_unsupported_selector_are_named():
    with pytest.raises(NoEligiblePool, match="no pools exist"):
        IPAM(MemoryDatastore()).assign(node="n", handle="h")
    ds = make_ds(("sel", "10.1.0.0/16", 26), sel={"nodeSelector": "zone == 'a'"})
    with pytest.raises(NoEligiblePool, match="nodeSelector .* not supported"):
        IPAM(ds).assign(node="n", handle="h")


def test_bad_node_name_is_rejected_before_any_write():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    with pytest.raises(IPAMError, match="Node_1"):
        IPAM(ds).assign(node="Node_1", handle="h")
    assert ds.list("BlockAffinity").items == []


def test_stale_pending_affinity_is_reused():
    ds = make_ds(("default", "10.244.0.0/16", 26))
    from ipam import blocks
    ds.create(blocks.pending_affinity("n", ipaddress.ip_network("10.244.0.0/26")))
    IPAM(ds).assign(node="n", handle="h")
    assert affinities(ds) == {("n", "10.244.0.0/26", "confirmed")}


ops = st.lists(
    st.one_of(
        st.tuples(st.just("assign"), st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 15)),
        st.tuples(st.just("release"), st.just(""), st.integers(0, 15)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_no_interleaving_of_assigns_and_releases_yields_duplicates(seq):
    ds = make_ds(("p", "10.5.0.0/27", 29))  # 4 blocks of 8: exhaustion happens often
    ipam = IPAM(ds)
    held: dict[str, set] = {}
    for op, node, h in seq:
        handle = f"h{h}"
        if op == "assign":
            try:
                ip = ipam.assign(node=node, handle=handle)
            except PoolExhausted:
                continue
            assert all(ip not in ips for hh, ips in held.items() if hh != handle), f"duplicate {ip}"
            assert held.get(handle, {ip}) == {ip}, "a second assign for a handle took another address"
            held[handle] = {ip}
        else:
            assert set(ipam.release(handle)) == held.pop(handle, set())
    stored = [ip for b in ipam.blocks() for hh in held for ip in _addresses(b, hh)]
    assert sorted(stored) == sorted(ip for ips in held.values() for ip in ips)
    for block in ipam.blocks():
        used = [i for i, a in enumerate(block.spec.allocations) if a is not None]
        assert sorted(used + block.spec.unallocated) == list(range(8))


def _addresses(block, handle):
    from ipam import blocks
    return blocks.handle_addresses(block, handle)


def test_assign_is_idempotent_per_handle():
    """A repeated CNI ADD (same container, same handle) gets the address it already holds."""
    ds = make_ds(("default", "10.244.0.0/16", 26))
    ipam = IPAM(ds)
    first = ipam.assign(node="n", handle="k8s-pod-network.c1")
    other = ipam.assign(node="n", handle="k8s-pod-network.c2")
    assert ipam.assign(node="n", handle="k8s-pod-network.c1") == first != other
    assert ipam.addresses("k8s-pod-network.c1") == [first]
    [block] = ipam.blocks()
    assert sum(a is not None for a in block.spec.allocations) == 2
    assert ipam.release("k8s-pod-network.c1") == [first]


def all_allocated(ipam) -> list:
    return [blocks.address_of(b, o) for b in ipam.blocks()
            for o, idx in enumerate(b.spec.allocations) if idx is not None]


def overlapping_pairs(ipam) -> list:
    nets = sorted(b.spec.network for b in ipam.blocks())
    return [(a, b) for i, a in enumerate(nets) for b in nets[i + 1:] if a.overlaps(b)]


@pytest.mark.parametrize("outer,inner", [("outer", "inner"), ("b-outer", "a-inner")])
def test_overlapping_pools_never_hand_out_an_address_twice(outer, inner):
    """Regression: an outer /16 (blocks /24) and an inner /24 (blocks /26), both stored: the inner
    pool's blocks and the outer pool's 10.80.0.0/24 were both created and both handed out 10.80.0.0."""
    ds = make_ds((outer, "10.80.0.0/16", 24), (inner, "10.80.0.0/24", 26))
    ipam = IPAM(ds)
    got = []
    for i in range(300):
        node = ("node1", "node2")[i % 2]
        pools = [(inner, outer), (outer, inner), None][i % 3]  # every order, and the default
        got.append(ipam.assign(node=node, handle=f"h{i}", pools=pools))
    assert len(set(got)) == len(got), "duplicate address"
    assert sorted(all_allocated(ipam)) == sorted(got)
    assert overlapping_pairs(ipam) == []


class OverlapRacer:
    """A datastore (fake at our seam) on which, right after our first IPAMBlock is created, another
    node creates an overlapping block -- as a concurrent claim from an overlapping pool would."""

    def __init__(self, inner, rival_cidr: str) -> None:
        self._inner, self._rival = inner, ipaddress.ip_network(rival_cidr)
        self.raced = False

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def create(self, resource):
        created = self._inner.create(resource)
        if resource.KIND == "IPAMBlock" and not self.raced:
            self.raced = True
            self._inner.create(blocks.new_block(self._rival, "rival"))
        return created


def test_block_that_meets_a_concurrent_overlapping_block_backs_off():
    inner = make_ds(("outer", "10.80.0.0/16", 24))
    ipam = IPAM(OverlapRacer(inner, "10.80.0.0/26"))
    ip = ipam.assign(node="node1", handle="h")
    assert ip == ipaddress.ip_address("10.80.1.0")  # the next candidate, not 10.80.0.0/24
    assert sorted(b.spec.cidr for b in ipam.blocks()) == ["10.80.0.0/26", "10.80.1.0/24"]
    # The block we backed off from is gone, and so is our affinity for it.
    assert affinities(inner) == {("node1", "10.80.1.0/24", "confirmed")}


def test_block_in_use_is_never_allocated_from_while_it_overlaps_another():
    """A datastore that already holds overlapping blocks (written before this fix, or by another
    tool): neither is used any more; the node claims a clean block."""
    ds = make_ds(("outer", "10.80.0.0/16", 24))
    ds.create(blocks.new_block(ipaddress.ip_network("10.80.0.0/24"), "node1"))
    ds.create(blocks.new_block(ipaddress.ip_network("10.80.0.0/26"), "node2"))
    ipam = IPAM(ds)
    assert ipam.assign(node="node1", handle="a") == ipaddress.ip_address("10.80.1.0")
    assert ipam.assign(node="node2", handle="b") == ipaddress.ip_address("10.80.2.0")


POOLS = [("10.80.0.0/23", 25), ("10.80.0.0/24", 26), ("10.80.0.128/25", 27), ("10.80.1.0/24", 28),
         ("10.80.0.0/22", 24)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(range(len(POOLS))), min_size=2, max_size=4, unique=True),
       st.lists(st.tuples(st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 40),
                          st.booleans()), max_size=80))
def test_overlapping_pools_property(pool_ids, seq):
    """Whatever overlapping pools a datastore holds and whatever the order of assigns and releases:
    no address is held twice and no two blocks overlap."""
    ds = make_ds(*((f"p{i}", *POOLS[i]) for i in pool_ids))
    ipam = IPAM(ds)
    held: dict[str, ipaddress.IPv4Address] = {}
    for node, h, release in seq:
        handle = f"h{h}"
        if release:
            ipam.release(handle)
            held.pop(handle, None)
            continue
        try:
            held[handle] = ipam.assign(node=node, handle=handle)
        except PoolExhausted:
            continue
    assert sorted(all_allocated(ipam)) == sorted(held.values())
    assert len(set(held.values())) == len(held)
    assert overlapping_pairs(ipam) == []
