"""The IPAM client: assign and release addresses through a Datastore, compare-and-swap everywhere.

Writes, in the order that keeps a crash harmless:
  claim:   create BlockAffinity(pending) -> create IPAMBlock(affinity host:<node>) -> re-check for
           overlapping blocks -> confirm affinity.
           Creating the block is the arbiter for one CIDR: if another node created it first we get
           AlreadyExists, withdraw our pending affinity and try the next candidate. Overlapping
           pools make different CIDRs collide (10.80.0.0/24 and 10.80.0.0/26), which create cannot
           see: so a candidate that overlaps any existing block is skipped, and after creating we
           list again; if an overlapping block appeared meanwhile we back off (remove ours if still
           empty, withdraw the affinity) and try another. Two racers see at least one another, so
           at most one proceeds; a block that overlaps another is never allocated from.
  assign:  a handle that already holds an address gets it back (a repeated CNI ADD); otherwise
           update(block) with the revision we read; Conflict -> re-read, retry (bounded).
  borrow:  no block of ours has room and none is left to claim: unless IPAMConfig strictAffinity
           (or the block's own strictAffinity), take an address from another node's block, lowest
           CIDR first. Every allocation records ``node`` in its attributes (Calico's secondary
           ``node``): the block's owner routes a borrowed address to that node, never blackholes it.
  release: the same per block holding the handle.
A pending affinity left by a crash is reused by the same node's next claim of that block.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import re
import time
from collections.abc import Iterator, Sequence

from crds import BlockAffinity, IPAMBlock, IPAMConfig, IPPool
from datastore import AlreadyExists, Conflict, Datastore, NotFound
from ipam import blocks
from ipam.errors import IPAMError, NoEligiblePool, PoolExhausted, RetriesExhausted

log = logging.getLogger(__name__)

_NODE_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class _Retry(Exception):
    """Internal: another writer won a race; re-read everything and try again."""


class IPAM:
    def __init__(self, ds: Datastore, *, max_retries: int = 20) -> None:
        self._ds = ds
        self._max_retries = max_retries

    # -- public API --------------------------------------------------------------------------------
    def assign(self, *, node: str, handle: str, attrs: dict[str, str] | None = None,
               pools: Sequence[str] | None = None) -> ipaddress.IPv4Address:
        """One IPv4 address for ``handle`` on ``node``, from the node's blocks or a newly claimed one.

        Idempotent per handle: if ``handle`` already holds an address, that address is returned and
        nothing is written (a retried CNI ADD must not take a second one). The allocation's
        attributes always carry ``node`` (``attrs`` cannot name another one).
        Raises NoEligiblePool, PoolExhausted (nothing written), RetriesExhausted (lost every race).
        """
        _check_node(node)
        eligible = self.eligible_pools(pools)
        attrs = {**(attrs or {}), "node": node}
        for attempt in range(self._max_retries):
            try:
                return self._assign_once(node, handle, attrs, eligible)
            except _Retry as why:
                log.debug("ipam assign retry", extra={"node": node, "attempt": attempt, "why": str(why)})
                _backoff(attempt)
        raise RetriesExhausted(
            f"assign for handle {handle} on node {node}: still conflicting after {self._max_retries}"
            " attempts")

    def release(self, handle: str) -> list[ipaddress.IPv4Address]:
        """Free every address held by ``handle``. Idempotent: [] when it holds nothing."""
        released: list[ipaddress.IPv4Address] = []
        for block in self.blocks():
            if blocks.handle_addresses(block, handle):
                released += self._release_in_block(block.name, handle)
        return sorted(released)

    def addresses(self, handle: str) -> list[ipaddress.IPv4Address]:
        """The addresses ``handle`` holds now (CNI CHECK, ``ipam show``)."""
        return sorted(ip for b in self.blocks() for ip in blocks.handle_addresses(b, handle))

    def blocks(self) -> list[IPAMBlock]:
        return [b for b in self._ds.list("IPAMBlock").items if isinstance(b, IPAMBlock)]

    def eligible_pools(self, names: Sequence[str] | None = None) -> list[IPPool]:
        """Enabled IPv4 Workload pools with nodeSelector all(), restricted to ``names`` if given."""
        pools = {p.name: p for p in self._ds.list("IPPool").items if isinstance(p, IPPool)}
        if names:
            unknown = [n for n in names if n not in pools]
            if unknown:
                raise NoEligiblePool(f"IP pool(s) {', '.join(unknown)} not found")
            reasons = {n: _ineligible(pools[n]) for n in names}
            bad = {n: r for n, r in reasons.items() if r}
            if bad:
                raise NoEligiblePool("; ".join(f"IP pool {n}: {r}" for n, r in bad.items()))
            return [pools[n] for n in names]
        eligible = [p for p in pools.values() if not _ineligible(p)]
        if not eligible:
            why = "; ".join(f"{n}: {_ineligible(p)}" for n, p in sorted(pools.items()))
            raise NoEligiblePool(f"no enabled IPv4 pool to assign from ({why or 'no pools exist'})")
        return sorted(eligible, key=lambda p: p.name)

    # -- assign ------------------------------------------------------------------------------------
    def _assign_once(self, node: str, handle: str, attrs: dict[str, str],
                     pools: list[IPPool]) -> ipaddress.IPv4Address:
        existing = self.blocks()
        held = self._held(existing, handle)
        if held is not None:
            return held
        index = blocks.BlockIndex(b.spec.network for b in existing)
        block = next(self._usable_blocks(existing, node, pools, index), None)
        if block is not None:
            return self._allocate_in(block, handle, attrs)
        for pool in pools:
            for cidr in blocks.candidate_blocks(pool):
                if not index.overlaps(cidr):
                    block = self._claim(node, cidr)
                    return self._allocate_in(block, handle, attrs)
        strict = self.strict_affinity()
        block = None if strict else next(self._borrowable_blocks(existing, node, pools, index), None)
        if block is not None:
            log.info("ipam borrowing from another node's block",
                     extra={"node": node, "block": block.name, "owner": block.spec.affine_node})
            return self._allocate_in(block, handle, attrs)
        raise PoolExhausted(
            f"no free address for node {node} in pool(s) {', '.join(p.name for p in pools)}: "
            "the node's blocks are full and no unclaimed block is left"
            + (" (strictAffinity: no borrowing)" if strict else ", nor a free address in any block"))

    def strict_affinity(self) -> bool:
        """IPAMConfig ``default``'s strictAffinity (false when there is none, as in Calico)."""
        try:
            config = self._ds.get("IPAMConfig", "default")
        except NotFound:
            return False
        return isinstance(config, IPAMConfig) and config.spec.strict_affinity

    @staticmethod
    def _held(existing: list[IPAMBlock], handle: str) -> ipaddress.IPv4Address | None:
        """The (lowest) address ``handle`` already holds: a repeated ADD for the same container."""
        held = sorted(ip for b in existing if any(a.handle_id == handle for a in b.spec.attributes)
                      for ip in blocks.handle_addresses(b, handle))
        if not held:
            return None
        log.info("ipam handle already holds an address", extra={"handle": handle, "ip": str(held[0])})
        return held[0]

    @staticmethod
    def _usable_blocks(existing: list[IPAMBlock], node: str, pools: list[IPPool],
                       index: blocks.BlockIndex) -> Iterator[IPAMBlock]:
        """The node's blocks with a free address inside an eligible pool, that overlap no other."""
        nets = [p.spec.network for p in pools]
        for block in existing:
            if (block.spec.affine_node != node or block.spec.deleted or not block.spec.unallocated
                    or not any(block.spec.network.subnet_of(n) for n in nets)):
                continue
            if block.spec.network in index.conflicted:
                log.warning("ipam block overlaps another block; not allocating from it",
                            extra={"block": block.name, "node": node})
                continue
            yield block

    @staticmethod
    def _borrowable_blocks(existing: list[IPAMBlock], node: str, pools: list[IPPool],
                           index: blocks.BlockIndex) -> Iterator[IPAMBlock]:
        """Other nodes' blocks (or unaffine ones) with a free address inside an eligible pool,
        lowest CIDR first; never one with its own strictAffinity, nor one overlapping another."""
        nets = [p.spec.network for p in pools]
        candidates = [b for b in existing
                      if b.spec.affine_node != node and not b.spec.deleted and b.spec.unallocated
                      and not b.spec.strict_affinity and b.spec.network.version == 4
                      and b.spec.network not in index.conflicted
                      and any(b.spec.network.subnet_of(n) for n in nets)]
        yield from sorted(candidates, key=lambda b: (int(b.spec.network.network_address),
                                                     b.spec.network.prefixlen))

    def _allocate_in(self, block: IPAMBlock, handle: str, attrs: dict[str, str]
                     ) -> ipaddress.IPv4Address:
        updated, address = blocks.allocate_one(block, handle, attrs)
        try:
            self._ds.update(updated)
        except (Conflict, NotFound) as exc:
            raise _Retry(f"block {block.name} changed: {exc}") from None
        log.debug("ipam assigned", extra={"block": block.name, "ip": str(address), "handle": handle})
        return address

    # -- claim -------------------------------------------------------------------------------------
    def _claim(self, node: str, cidr: ipaddress.IPv4Network) -> IPAMBlock:
        """pending affinity -> block -> confirmed affinity. _Retry if another node got the block."""
        affinity = self._create_pending_affinity(node, cidr)
        try:
            block = self._ds.create(blocks.new_block(cidr, node))
        except AlreadyExists:
            if self._block_owner(cidr) != node:  # another node won; a same-node racer keeps it
                self._withdraw_affinity(affinity)
            raise _Retry(f"block {cidr} was created concurrently") from None
        assert isinstance(block, IPAMBlock), "Bug: datastore returned a non-block"
        self._back_off_if_overlapped(block, affinity)
        self._confirm_affinity(affinity)
        log.info("ipam claimed block", extra={"node": node, "cidr": str(cidr)})
        return block

    def _back_off_if_overlapped(self, block: IPAMBlock, affinity: BlockAffinity) -> None:
        """_Retry if a block overlapping ours was created since we chose the candidate."""
        others = [b.spec.cidr for b in self.blocks()
                  if b.name != block.name and b.spec.network.overlaps(block.spec.network)]
        if not others:
            return
        if self._remove_if_empty(block):
            self._withdraw_affinity(affinity)
        else:  # a same-node racer already allocated from it: it stays ours, unused while it overlaps
            self._confirm_affinity(affinity)
        raise _Retry(f"block {block.spec.cidr} overlaps {', '.join(others)}, created concurrently")

    def _remove_if_empty(self, block: IPAMBlock) -> bool:
        """Delete ``block`` unless an address in it is allocated; True when it is gone."""
        for _ in range(self._max_retries):
            if any(idx is not None for idx in block.spec.allocations):
                return False
            try:
                self._ds.delete("IPAMBlock", block.name, revision=block.metadata.resource_version)
                return True
            except NotFound:
                return True
            except Conflict:
                try:
                    block = self._ds.get("IPAMBlock", block.name)  # type: ignore[assignment]
                except NotFound:
                    return True
        raise RetriesExhausted(f"IPAMBlock {block.name}: could not remove it after an overlap")

    def _block_owner(self, cidr: ipaddress.IPv4Network) -> str | None:
        try:
            block = self._ds.get("IPAMBlock", blocks.block_name(cidr))
        except NotFound:
            return None
        assert isinstance(block, IPAMBlock)
        return block.spec.affine_node

    def _create_pending_affinity(self, node: str, cidr: ipaddress.IPv4Network) -> BlockAffinity:
        try:
            created = self._ds.create(blocks.pending_affinity(node, cidr))
        except AlreadyExists:  # ours: a concurrent claim on this node, or a crashed earlier one
            try:
                created = self._ds.get("BlockAffinity", blocks.affinity_name(node, cidr))
            except NotFound:  # that claim lost the block to another node and withdrew it
                raise _Retry(f"affinity for {cidr} withdrawn concurrently") from None
        assert isinstance(created, BlockAffinity), "Bug: datastore returned a non-affinity"
        return created

    def _withdraw_affinity(self, affinity: BlockAffinity) -> None:
        try:
            self._ds.delete("BlockAffinity", affinity.name,
                            revision=affinity.metadata.resource_version)
        except (NotFound, Conflict):
            pass  # someone else already changed or removed it; only a pending one was ours to drop

    def _confirm_affinity(self, affinity: BlockAffinity) -> None:
        for _ in range(self._max_retries):
            if affinity.spec.state == "confirmed":
                return
            spec = affinity.spec.model_copy(update={"state": "confirmed"})
            try:
                self._ds.update(affinity.model_copy(update={"spec": spec}))
                return
            except Conflict:
                current = self._ds.get("BlockAffinity", affinity.name)
                assert isinstance(current, BlockAffinity)
                affinity = current
            except NotFound:  # withdrawn under us by a racer that misjudged: write it back confirmed
                try:
                    self._ds.create(affinity.with_revision(None).model_copy(update={"spec": spec}))
                    return
                except AlreadyExists:
                    affinity = self._ds.get("BlockAffinity", affinity.name)  # type: ignore[assignment]
        raise RetriesExhausted(f"BlockAffinity {affinity.name}: could not confirm")

    # -- release -----------------------------------------------------------------------------------
    def _release_in_block(self, name: str, handle: str) -> list[ipaddress.IPv4Address]:
        for attempt in range(self._max_retries):
            try:
                block = self._ds.get("IPAMBlock", name)
            except NotFound:
                return []
            assert isinstance(block, IPAMBlock)
            updated, freed = blocks.release_handle(block, handle)
            if not freed:
                return []
            try:
                self._ds.update(updated)
                log.debug("ipam released", extra={"block": name, "handle": handle})
                return freed
            except (Conflict, NotFound):
                _backoff(attempt)
        raise RetriesExhausted(f"release of handle {handle} in block {name}: still conflicting")


def _ineligible(pool: IPPool) -> str | None:
    """Why ``pool`` cannot serve workloads here, or None when it can."""
    spec = pool.spec
    if spec.disabled:
        return "disabled"
    if spec.network.version != 4:
        return "not IPv4"
    if "Workload" not in spec.allowed_uses:
        return f"allowedUses {spec.allowed_uses} excludes Workload"
    if spec.node_selector.strip() != "all()":
        return f"nodeSelector {spec.node_selector!r} is not supported (only all())"
    return None


def _check_node(node: str) -> None:
    # The node name becomes part of BlockAffinity names, which must be DNS subdomain names.
    if not _NODE_RE.match(node) or len(node) > 200:
        raise IPAMError(f"node name {node!r} is not a lowercase DNS name (a-z, 0-9, '-', '.')")


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.05, 0.002 * 2 ** attempt)))
