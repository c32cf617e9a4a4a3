"""Concurrent block claims on a tiny pool: one owner per block, no duplicate IPs, no stray affinities.

The memory datastore serialises each call, so a jittering wrapper (a fake at our own seam) sleeps a
little before every call to force interleavings between the read and the compare-and-swap write.
``run_race`` is shared with the etcd-backed functional test.
"""
from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections import Counter

import pytest

from crds import IPPool, ObjectMeta
from datastore import Datastore
from datastore.memory import MemoryDatastore
from ipam import IPAM, PoolExhausted, RetriesExhausted


class JitterDatastore:
    """Delegates to a real datastore, sleeping up to ``max_sleep`` seconds before each call."""

    def __init__(self, inner: Datastore, max_sleep: float = 0.002) -> None:
        self._inner, self._max = inner, max_sleep

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            time.sleep(random.uniform(0, self._max))
            return attr(*args, **kwargs)
        return call


def run_race(ds_for_thread, nodes: list[str], pool_cidr: str = "10.77.0.0/25",
             block_size: int = 26) -> dict:
    """Each thread assigns for its node until PoolExhausted; returns what every thread got."""
    ds_for_thread(0).create(
        IPPool(metadata=ObjectMeta(name="race"), spec={"cidr": pool_cidr, "blockSize": block_size}))
    barrier = threading.Barrier(len(nodes))
    got: dict[int, list[tuple[str, ipaddress.IPv4Address]]] = {i: [] for i in range(len(nodes))}

    def worker(i: int, node: str) -> None:
        ipam = IPAM(ds_for_thread(i), max_retries=50)
        barrier.wait()
        for n in range(10_000):
            handle = f"{node}.{i}.{n}"
            try:
                got[i].append((handle, ipam.assign(node=node, handle=handle)))
            except RetriesExhausted:
                continue  # transient by contract; correctness is what we check
            except PoolExhausted:
                return

    run_threads(worker, list(enumerate(nodes)))
    return got


def run_threads(target, arg_lists: list[tuple]) -> None:
    """``target(*args)`` in one thread per args tuple; fail on a hung worker or any worker error."""
    errors: list[BaseException] = []

    def guarded(*args) -> None:
        try:
            target(*args)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=args) for args in arg_lists]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors


def check_race(ds: Datastore, nodes: list[str], got: dict, pool_cidr: str = "10.77.0.0/25") -> None:
    pool = ipaddress.ip_network(pool_cidr)
    handed = [(i, h, ip) for i, items in got.items() for h, ip in items]
    counts = Counter(ip for _, _, ip in handed)
    assert [ip for ip, c in counts.items() if c > 1] == [], "duplicate IPs handed out"
    assert len(handed) == pool.num_addresses, "every address of the pool is handed out once"

    blocks = {b.spec.cidr: b for b in ds.list("IPAMBlock").items}
    assert sorted(blocks) == sorted(str(s) for s in pool.subnets(new_prefix=26))
    for i, h, ip in handed:  # each IP lies in a block affine to the node that asked for it, or
        # was borrowed (the pool had no block left to claim) and records that node
        [owner] = [b for b in blocks.values() if ip in b.spec.network]
        idx = owner.spec.allocations[int(ip) - int(owner.spec.network.network_address)]
        assert owner.spec.attributes[idx].secondary["node"] == nodes[i]
        assert owner.spec.affine_node in {n for n in nodes}
    # The datastore agrees: each handle holds exactly the address its thread received.
    stored = {}
    for b in blocks.values():
        for ordinal, idx in enumerate(b.spec.allocations):
            if idx is not None:
                stored[b.spec.network.network_address + ordinal] = b.spec.attributes[idx].handle_id
    assert stored == {ip: h for _, h, ip in handed}
    # Exactly one confirmed affinity per block, for its owner; losers left no pending affinity.
    affs = {(a.spec.node, a.spec.cidr, a.spec.state) for a in ds.list("BlockAffinity").items}
    assert affs == {(b.spec.affine_node, cidr, "confirmed") for cidr, b in blocks.items()}


@pytest.mark.parametrize("nodes", [
    ["node1", "node2"],
    ["node1", "node2", "node3", "node4"],
    ["node1", "node1", "node2", "node2", "node3"],  # same-node threads share a block
])
def test_concurrent_claims_on_tiny_pool(nodes):
    for _ in range(5):
        inner = MemoryDatastore()
        jitter = JitterDatastore(inner)
        got = run_race(lambda i: jitter, nodes)
        check_race(inner, nodes, got)


def run_overlap_race(ds_for_thread, plan: list[tuple[str, str]]) -> list[tuple[str, object]]:
    """Threads (node, pool) assign from overlapping pools until each pool is exhausted for them."""
    ds = ds_for_thread(0)
    ds.create(IPPool(metadata=ObjectMeta(name="outer"), spec={"cidr": "10.78.0.0/25", "blockSize": 26}))
    ds.create(IPPool(metadata=ObjectMeta(name="inner"), spec={"cidr": "10.78.0.0/26", "blockSize": 28}))
    barrier = threading.Barrier(len(plan))
    got: list[tuple[str, object]] = []

    def worker(i: int, node: str, pool: str) -> None:
        ipam = IPAM(ds_for_thread(i), max_retries=50)
        barrier.wait()
        for n in range(1000):
            try:
                got.append((f"{i}.{n}", ipam.assign(node=node, handle=f"{i}.{n}", pools=[pool])))
            except RetriesExhausted:
                continue
            except PoolExhausted:
                return

    run_threads(worker, [(i, node, pool) for i, (node, pool) in enumerate(plan)])
    return got


def check_overlap_race(ds: Datastore, got: list) -> None:
    counts = Counter(ip for _, ip in got)
    assert [ip for ip, c in counts.items() if c > 1] == [], "duplicate IPs handed out"
    blocks = sorted((b.spec.network, b) for b in ds.list("IPAMBlock").items)
    nets = [n for n, _ in blocks]
    assert [(a, b) for i, a in enumerate(nets) for b in nets[i + 1:] if a.overlaps(b)] == []
    stored = {n.network_address + o: b.spec.attributes[idx].handle_id
              for n, b in blocks for o, idx in enumerate(b.spec.allocations) if idx is not None}
    assert stored == {ip: h for h, ip in got}
    affs = {(a.spec.node, a.spec.cidr, a.spec.state) for a in ds.list("BlockAffinity").items}
    assert affs == {(b.spec.affine_node, str(n), "confirmed") for n, b in blocks}


@pytest.mark.parametrize("plan", [
    [("node1", "outer"), ("node2", "inner")],
    [("node1", "outer"), ("node2", "inner"), ("node3", "outer"), ("node4", "inner")],
    [("node1", "outer"), ("node1", "inner"), ("node2", "inner")],
])
def test_concurrent_claims_from_overlapping_pools(plan):
    """Blocks of overlapping pools claimed at once never overlap, so no address is handed out twice."""
    for _ in range(5):
        inner = MemoryDatastore()
        jitter = JitterDatastore(inner)
        check_overlap_race(inner, run_overlap_race(lambda i: jitter, plan))
