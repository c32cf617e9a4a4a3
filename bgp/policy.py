"""The RIB's policy: which learned paths may be used (import rules and origin validation) and
which of a prefix's usable paths is best (RFC 4271 9.1).

Purely computational; no I/O. ``bgp.rib`` holds the paths and asks this module; nothing else
filters learned routes (``felix.calc`` takes ``Rib.best()`` as it is).

Import rules, in order (the first that applies names the counter of a rejection):

- ``rejected_default_route``: 0.0.0.0/0, whatever the pools;
- ``rejected_outside_pools``: not equal to or inside an IPPool (disabled pools included: disabling
  a pool stops allocation, its pods keep their routes);
- a /32 the datastore records as borrowed (an address of one node's block held by another node)
  is accepted from its holder only (``rejected_origin_mismatch`` otherwise), even inside one of
  our own blocks;
- ``rejected_own_block``: equal to or inside one of our own blocks (the datastore, not BGP, says
  where those addresses go);
- origin validation, when the origins are known (``set_origins``): a prefix equal to a block is
  accepted only from the node the block is affine to, else ``rejected_origin_mismatch``; a
  more-specific of a block (other than a borrowed /32) is ``rejected_origin_mismatch`` too (a
  Calico node announces its blocks and the /32s it borrowed, nothing in between); a pool prefix
  no block covers (an aggregate, or space nobody claimed) is ``rejected_origin_unknown``.

The originating node of a path is its ORIGINATOR_ID when it came through a route reflector, else
its next hop; both are the node's address for a pycalico or Calico node (router id = address).
An external (non-cluster) peer announcing a pool prefix is no block's owner: its route is
dropped and counted as ``rejected_origin_mismatch`` (or ``rejected_origin_unknown``), like a
rogue node's. Its routes outside every pool are ``rejected_outside_pools``.

Best path among a prefix's accepted paths (``select``), each step keeping the best of the ones
left: a fresh path over a stale one (graceful restart; ``bgp.rib`` applies this step), highest
LOCAL_PREF (100 when absent, and ignored from an eBGP peer, RFC 4271 5.1.5), shortest AS_PATH,
lowest ORIGIN, lowest MED among paths from the same neighbouring AS only (RFC 4271 9.1.2.2 c:
paths from different neighbouring ASes are not compared on MED; an absent MED is 0), eBGP over
iBGP, shortest CLUSTER_LIST, lowest ORIGINATOR_ID or else the peer's BGP identifier, lowest peer
address. Each step removes paths from a set, so the result does not depend on arrival order.

>>> from ipaddress import IPv4Address as A, IPv4Network as N
>>> p = ImportPolicy()
>>> p.set_filter(frozenset({N("10.244.0.0/16")}), frozenset())
True
>>> _ = p.set_origins({N("10.244.1.0/26"): A("10.0.0.1")}, {})
>>> p.rejection(N("10.244.1.0/26"), A("10.0.0.1")), p.rejection(N("10.244.1.0/26"), A("10.0.0.9"))
(None, 'rejected_origin_mismatch')
>>> p.rejection(N("10.244.0.0/17"), A("10.0.0.1"))
'rejected_origin_unknown'
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from itertools import repeat
from operator import and_, rshift

from bgp.protocol import ADDRESS_MASK, LENGTH_SHIFT, key_of

DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True, slots=True)
class Candidate:
    """One accepted path of a prefix, with what selection needs from its session."""

    peer: IPv4Address
    path: object  # bgp.rib._Path: local_pref, as_path_len, origin, med, neighbor_as, ...
    ebgp: bool
    router_id: IPv4Address  # the peer's BGP identifier (its OPEN), or its address if unknown


def select(candidates: list[Candidate]) -> Candidate:
    """The best of ``candidates`` (not empty), by the steps in the module docstring."""
    if len(candidates) == 1:
        return candidates[0]
    top = min(c.path.rank for c in candidates)  # (-LOCAL_PREF, AS_PATH length, ORIGIN)
    left = [c for c in candidates if c.path.rank == top]
    if len(left) > 1:
        lowest: dict[int | None, int] = {}
        for c in left:
            asn, med = c.path.neighbor_as, c.path.med
            if asn not in lowest or med < lowest[asn]:
                lowest[asn] = med
        left = [c for c in left if c.path.med == lowest[c.path.neighbor_as]]
    return min(left, key=_tie_break)


def _tie_break(c: Candidate) -> tuple:
    path = c.path
    ident = path.originator_id if path.originator_id is not None else c.router_id
    return (not c.ebgp, len(path.cluster_list), ident, c.peer)


def rank(local_pref: int | None, as_path_len: int, origin: int, ebgp: bool) -> tuple[int, int, int]:
    """The part of selection that is a plain order (lower is better)."""
    pref = DEFAULT_LOCAL_PREF if local_pref is None or ebgp else local_pref
    return (-pref, as_path_len, origin)


class ImportPolicy:
    """Pools, our own blocks, and (once ``set_origins`` was called) who may originate what."""

    def __init__(self) -> None:
        self.pools: frozenset[IPv4Network] = frozenset()
        self.own: frozenset[IPv4Network] = frozenset()
        self._pool_bits: tuple[tuple[int, int], ...] = ()
        self._own_bits: tuple[tuple[int, int], ...] = ()
        # Own blocks by prefix length: {length: {network >> (32 - length)}}, for ``_all_accepted``.
        self._own_tops: dict[int, frozenset[int]] = {}
        # Origins as integers (an IPv4Address compare or hash is Python code; this is per route):
        # {prefix key (protocol.prefix_key): owner}, {address: holder}; None: validation off.
        self._blocks: dict[int, int] | None = None
        self._block_lengths: tuple[int, ...] = ()
        self._length_counts: Counter[int] = Counter()  # blocks per prefix length
        self._borrowed: dict[int, int] = {}
        self._origins: tuple[dict, dict] | None = None

    @property
    def validating(self) -> bool:
        return self._blocks is not None

    def set_filter(self, pools: Iterable[IPv4Network], own_blocks: Iterable[IPv4Network]) -> bool:
        pools, own_blocks = frozenset(pools), frozenset(own_blocks)
        if (pools, own_blocks) == (self.pools, self.own):
            return False
        self.pools, self.own = pools, own_blocks
        self._pool_bits, self._own_bits = _bits(pools), _bits(own_blocks)
        self._own_tops = {length: frozenset(n >> (32 - length) for n, ln in self._own_bits if ln == length)
                          for length in {ln for _, ln in self._own_bits}}
        return True

    def set_origins(self, blocks: Mapping[IPv4Network, IPv4Address] | None,
                    borrowed: Mapping[IPv4Address, IPv4Address]) -> set[IPv4Network] | None:
        """``blocks``: each block with an affinity -> its node's address (None: no origin
        validation); ``borrowed``: each borrowed address -> its holder's address. Returns the
        prefixes whose verdict may have changed (empty: nothing changed), or None when every
        prefix's may have (validation turned on or off)."""
        new = None if blocks is None else (dict(blocks), dict(borrowed))
        old = self._origins
        if new == old:
            return set()
        self._origins = new
        if new is None:
            self._blocks, self._block_lengths, self._borrowed = None, (), {}
            return None
        self._blocks = {_key(n): int(a) for n, a in new[0].items()}
        self._length_counts = Counter(n.prefixlen for n in new[0])
        self._block_lengths = tuple(sorted(self._length_counts))
        self._borrowed = {int(ip): int(a) for ip, a in new[1].items()}
        if old is None:
            return None
        changed = {n for n in new[0].keys() | old[0].keys() if new[0].get(n) != old[0].get(n)}
        changed |= {IPv4Network(ip) for ip in new[1].keys() | old[1].keys()
                    if new[1].get(ip) != old[1].get(ip)}
        return changed

    def change_origins(self, blocks: Mapping[IPv4Network, IPv4Address | None],
                       borrowed: Mapping[IPv4Address, IPv4Address | None]) -> set[IPv4Network]:
        """``set_origins`` by difference, in time proportional to the change: each block (each
        borrowed address) given -> its new owner's (holder's) address, None: no longer owned
        (held). Origin validation must be on. Returns the prefixes whose verdict may have changed."""
        if self._origins is None:
            raise AssertionError("Bug: change_origins with origin validation off (set_origins first)")
        known_blocks, known_borrowed = self._origins
        changed = set()
        for block, owner in blocks.items():
            if known_blocks.get(block) == owner:
                continue
            changed.add(block)
            lengths = self._length_counts
            if owner is None:
                del known_blocks[block], self._blocks[_key(block)]
                lengths[block.prefixlen] -= 1
            else:
                lengths[block.prefixlen] += block not in known_blocks
                known_blocks[block], self._blocks[_key(block)] = owner, int(owner)
        for ip, holder in borrowed.items():
            if known_borrowed.get(ip) == holder:
                continue
            changed.add(IPv4Network(ip))
            if holder is None:
                del known_borrowed[ip], self._borrowed[int(ip)]
            else:
                known_borrowed[ip], self._borrowed[int(ip)] = holder, int(holder)
        self._block_lengths = tuple(sorted(n for n, count in self._length_counts.items() if count))
        return changed

    def rejection(self, prefix: IPv4Network, origin: IPv4Address | int | None = None) -> str | None:
        """Why ``prefix`` from the node ``origin`` is not imported (a counter name), or None.
        ``origin`` matters only once origins are set."""
        if origin is not None and type(origin) is not int:
            origin = origin._ip
        return self.rejection_key(_key(prefix), origin)

    def rejection_key(self, key: int, origin: int | None) -> str | None:
        """``rejection`` of a prefix key (``protocol.prefix_key``) from the node whose address
        is the integer ``origin``: the RIB's form, per learned route (no ipaddress object)."""
        length = key >> LENGTH_SHIFT
        if length == 0:
            return "rejected_default_route"
        address = key & ADDRESS_MASK
        if not _inside(address, length, self._pool_bits):
            return "rejected_outside_pools"
        blocks = self._blocks
        if blocks is not None and length == 32:
            holder = self._borrowed.get(address)
            if holder is not None:
                return None if holder == origin else "rejected_origin_mismatch"
        if _inside(address, length, self._own_bits):
            return "rejected_own_block"
        if blocks is None:
            return None
        owner = blocks.get(key)
        if owner is not None:
            return None if owner == origin else "rejected_origin_mismatch"
        for block_len in self._block_lengths:
            if block_len < length:
                base = address >> (32 - block_len) << (32 - block_len)
                if key_of(base, block_len) in blocks:
                    return "rejected_origin_mismatch"
        return "rejected_origin_unknown"

    def split(self, keys: tuple[int, ...], origin: int | None
              ) -> tuple[tuple[int, ...] | list[int], list[tuple[int, str]]]:
        """(accepted keys, [(rejected key, reason)]) of one UPDATE's keys from ``origin``.

        Without origin validation, a key inside one pool and no own block is accepted; that is
        tested for the whole UPDATE at once (comprehensions over integers, ~0.1 us a key) and
        only the keys it leaves out go through ``rejection_key``, which names the reason."""
        if self._blocks is None and len(self._pool_bits) == 1:
            if self._all_accepted(keys):
                return keys, []
            (pool, pool_len), shift = self._pool_bits[0], 32 - self._pool_bits[0][1]
            # a key's length (its high bits): inside the pool, never a default route
            low, mask = max(pool_len, 1) << LENGTH_SHIFT, ADDRESS_MASK
            inside = [k for k in keys if (k & mask ^ pool) >> shift == 0 and k >= low]
            if self._own_bits and inside:
                own = self._own_bits
                inside = [k for k in inside if not _inside(k & mask, k >> LENGTH_SHIFT, own)]
            if len(inside) == len(keys):
                return keys, []
            taken = set(inside)
            return inside, [(k, self.rejection_key(k, origin)) for k in keys if k not in taken]
        accepted, rejected = [], []
        for k in keys:
            reason = self.rejection_key(k, origin)
            if reason is None:
                accepted.append(k)
            else:
                rejected.append((k, reason))
        return accepted, rejected


    def _all_accepted(self, keys: tuple[int, ...]) -> bool:
        """Whether, without origin validation and with one pool, every key is accepted: inside
        the pool, not a default route, no more-specific of (or equal to) an own block. A few
        passes in C over the keys (~0.05 us a key, a third of a comprehension's): their range,
        their lengths, and per own-block length whether a key shares an own block's top bits
        (a shorter key that does is sent to the exact test too: False means "not sure")."""
        if not keys:
            return True
        (pool, pool_len), = self._pool_bits
        shortest, longest = min(keys), max(keys)  # by length: a key's high bits
        if shortest >> LENGTH_SHIFT < max(pool_len, 1):
            return False
        if shortest >> LENGTH_SHIFT == longest >> LENGTH_SHIFT:  # one length: min, max by address
            low, high = shortest & ADDRESS_MASK, longest & ADDRESS_MASK
        else:
            addresses = list(map(and_, keys, repeat(ADDRESS_MASK)))
            low, high = min(addresses), max(addresses)
        if low < pool or high >= pool + (1 << (32 - pool_len)):
            return False
        return all(tops.isdisjoint(map(rshift, map(and_, keys, repeat(ADDRESS_MASK)),
                                       repeat(32 - length)))
                   for length, tops in self._own_tops.items())


def _key(n: IPv4Network) -> int:
    return key_of(int(n.network_address), n.prefixlen)


def _bits(networks: Iterable[IPv4Network]) -> tuple[tuple[int, int], ...]:
    """(network, prefix length) as integers, for ``_inside``."""
    return tuple((int(n.network_address), n.prefixlen) for n in networks)


def _inside(address: int, length: int, networks: tuple[tuple[int, int], ...]) -> bool:
    """Whether the prefix ``address/length`` is equal to or inside one of ``networks``."""
    for network, net_len in networks:
        if net_len <= length and (address ^ network) >> (32 - net_len) == 0:
            return True
    return False
