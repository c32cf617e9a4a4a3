"""Adj-RIB-In per peer, import filter and origin validation, best path, per-peer max-prefix,
route-reflection loop checks (RFC 4456 8) and graceful-restart (RFC 4724 helper) retention.

Purely computational; no I/O. Time comes from an injected clock, so stale-route expiry is tested
with a fake one.

ExaBGP keeps none of this for us (no best path, no retention of a restarting peer's routes), so
the speaker feeds every parsed event here and asks ``best()`` for what may reach the kernel.

Loop checks run on receipt, on every node: a route whose ORIGINATOR_ID is our router id, or whose
CLUSTER_LIST holds our cluster id, is dropped (counted) and replaces, i.e. withdraws, what that
peer sent before for the prefix. ``bgp.reflect`` reflects the best paths; ``take_dirty()`` tells
it which prefixes' best paths may have changed.

The Adj-RIB-In keeps what peers sent before filtering, and ``best()`` filters against the current
pools and origins (``bgp.policy`` has the rules and the best-path steps): a pool created, or a
block claimed, after a peer announced it then takes effect without a route refresh. The
rejection counters count announcements when they arrive, against the policy of that moment --
except an origin rejection (``ORIGIN_REASONS``): a node announces a block it has just claimed,
or an address it has just borrowed, as soon as its IPAM write is done, and the route may arrive
before the datastore watch has shown us that write. Such a route is held (in the Adj-RIB-In,
never a best path) for ``origin_hold`` seconds; it is counted only if it is still held and still
rejected then (a rogue origin), not if the origins changed meanwhile in its favour or it was
withdrawn. ``expire()`` counts what is due, as the speaker's timer at ``next_deadline()`` calls it.
While the origins are not the datastore's current view (``set_origins_current``: the datastore
is away, or not in sync again yet) nothing held is counted, however long; back in sync, every
held route has ``origin_hold`` from then. At most ``held_max`` routes are held at once; past that,
an origin rejection is counted on arrival.

Max-prefix: a peer whose Adj-RIB-In would hold more than its limit (``set_max_prefixes``) loses
every route it sent, its further announcements are dropped (``rejected_max_prefix``) until its
session goes down, and ``take_exceeded()`` tells the speaker to tear the session down (Cease,
RFC 4486 subcode 1). The limit counts what the peer sent, accepted or not: it bounds our memory
as well as our kernel.

Work per route is constant: the best path of a prefix is kept up to date as its paths change
(only that prefix's candidates are looked at, and not even those when it had no accepted path
or only one peer holds paths), the attributes selection compares are ranked once per UPDATE,
``best()`` returns a cached frozenset until the next change, and each route's hash is computed
once.

>>> from ipaddress import IPv4Address as A, IPv4Network as N
>>> rib = Rib(clock=lambda: 0.0)
>>> rib.set_import_filter(frozenset({N("10.244.0.0/16")}), frozenset({N("10.244.1.0/26")}))
True
>>> rib.announce_many(A("10.0.0.2"), A("10.0.0.2"), [N("10.244.2.0/26"), N("192.0.2.0/24")])
>>> sorted(str(r.prefix) for r in rib.best()), rib.counters["rejected_outside_pools"]
(['10.244.2.0/26'], 1)
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import and_, is_not, itemgetter
from ipaddress import IPv4Address, IPv4Network

from bgp import protocol
from bgp.policy import Candidate, ImportPolicy, rank, select

log = logging.getLogger(__name__)

DEFAULT_RESTART_TIME = 120.0
# How long a route rejected for its origin is held before it is counted: longer than a
# datastore watch event takes to reach the agent and its reconcile, on a loaded node.
ORIGIN_HOLD = 10.0
ORIGIN_REASONS = frozenset({"rejected_origin_unknown", "rejected_origin_mismatch"})
# At most this many routes are held at once: past it an origin rejection is counted on arrival.
# A peer that announces and withdraws ever new rejected prefixes would otherwise grow the hold
# queue by its UPDATE rate times ORIGIN_HOLD (max-prefix bounds what a peer holds, not its churn);
# ~100 bytes a route, and far above the blocks a healthy cluster claims within one hold.
HELD_MAX = 50_000

_consume = deque(maxlen=0).extend  # runs an iterator to its end, in C, keeping nothing


@dataclass(frozen=True, slots=True, eq=False)
class _Path:
    """What one UPDATE from ``peer`` said about its prefixes (shared by all of them: one object
    per UPDATE, so the Adj-RIB-In and the best paths hold no object per route). ``rank``:
    ``policy.rank`` of its LOCAL_PREF, AS_PATH length and ORIGIN. ``ident``: what makes two
    paths the same route (peer, next hop, ORIGINATOR_ID, CLUSTER_LIST as integers), compared
    when a re-announcement replaces a path. Paths themselves compare and hash by identity (in
    C: the consumer makes one via per path, ``felix.cluster.learned_pairs``)."""

    peer: IPv4Address
    nexthop: IPv4Address
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    attributes: str = ""
    rank: tuple[int, int, int] = (-100, 0, 0)
    med: int = 0
    neighbor_as: int | None = None
    ident: tuple = field(default=(), compare=False)

    def __post_init__(self) -> None:
        originator = None if self.originator_id is None else self.originator_id._ip
        object.__setattr__(self, "ident", (self.peer._ip, self.nexthop._ip, originator,
                                           tuple(c._ip for c in self.cluster_list)))

    @property
    def origin_node(self) -> IPv4Address:
        """The node the path claims to come from: ORIGINATOR_ID through a reflector, else the
        next hop."""
        return self.originator_id if self.originator_id is not None else self.nexthop


class LearnedRoute(tuple):
    """One best path as consumers see it: a prefix (``key``, ``protocol.prefix_key``; ``prefix``
    builds the ``IPv4Network``) and the path that carried it. Made on demand from the RIB's
    (key, shared path) pairs, never stored per route: a ``(key, path)`` tuple, so the RIB makes
    100k of them in C (``_views``, ~0.1 us each). Equal when prefix, next hop, peer,
    ORIGINATOR_ID and CLUSTER_LIST are (the passed-on ``attributes`` are not compared: the kernel
    route does not depend on them).

    >>> from ipaddress import IPv4Address as A, IPv4Network as N
    >>> r = LearnedRoute(N("10.244.1.0/26"), A("10.0.0.1"), A("10.0.0.1"))
    >>> r.prefix, r.nexthop, r == LearnedRoute(r.key, A("10.0.0.1"), A("10.0.0.1"))
    (IPv4Network('10.244.1.0/26'), IPv4Address('10.0.0.1'), True)
    """

    __slots__ = ()

    def __new__(cls, prefix: IPv4Network | int, nexthop: IPv4Address, peer: IPv4Address,
                originator_id: IPv4Address | None = None, cluster_list: tuple[IPv4Address, ...] = (),
                attributes: str = "") -> LearnedRoute:
        key = prefix if type(prefix) is int else protocol.prefix_key(prefix)
        return tuple.__new__(cls, (key, _Path(peer, nexthop, originator_id, tuple(cluster_list), attributes)))

    key = property(itemgetter(0), doc="the prefix's key (protocol.prefix_key)")
    path = property(itemgetter(1), doc="the shared _Path of the UPDATE that carried it")

    @property
    def prefix(self) -> IPv4Network:
        return protocol.key_network(self[0])

    @property
    def nexthop(self) -> IPv4Address:
        return self[1].nexthop

    @property
    def peer(self) -> IPv4Address:
        return self[1].peer

    @property
    def originator_id(self) -> IPv4Address | None:
        return self[1].originator_id

    @property
    def cluster_list(self) -> tuple[IPv4Address, ...]:
        return self[1].cluster_list

    @property
    def attributes(self) -> str:
        return self[1].attributes

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not LearnedRoute:
            return NotImplemented
        return self[0] == other[0] and self[1].ident == other[1].ident

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((self[0], self[1].ident))

    def __repr__(self) -> str:
        p = self[1]
        return (f"LearnedRoute(prefix={protocol.key_text(self[0])}, nexthop={p.nexthop}, peer={p.peer}, "
                f"originator_id={p.originator_id}, cluster_list={p.cluster_list})")


def _views(pairs: Iterable[tuple[int, _Path]]) -> list[LearnedRoute]:
    """LearnedRoutes of (key, path) pairs, made in C (``tuple.__new__``, not ``__new__``)."""
    return list(map(tuple.__new__, repeat(LearnedRoute), pairs))


def _view(key: int, path: _Path) -> LearnedRoute:
    return tuple.__new__(LearnedRoute, (key, path))


def _keys(prefixes: Iterable) -> tuple[tuple, bool]:
    """``prefixes`` as keys: ints pass, networks are converted, anything else is kept (and
    counted as malformed by the caller); and whether they are all ints (checked once here)."""
    if type(prefixes) is not tuple:
        prefixes = tuple(prefixes)
    if protocol.all_ints(prefixes):
        return prefixes, True
    keys = tuple(k if type(k) is int else protocol.prefix_key(k)
                 if isinstance(k, IPv4Network) else k for k in prefixes)
    return keys, protocol.all_ints(keys)


def _key(prefix: IPv4Network | int) -> int:
    return prefix if type(prefix) is int else protocol.prefix_key(prefix)


class Rib:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 restart_time: float = DEFAULT_RESTART_TIME, router_id: IPv4Address | None = None,
                 origin_hold: float = ORIGIN_HOLD, held_max: int = HELD_MAX) -> None:
        self._clock = clock
        self.origin_hold = origin_hold  # 0: an origin rejection is counted at once
        self.held_max = held_max
        # Routes rejected for their origin, not counted yet, in arrival order (so by deadline).
        self._held: deque[tuple[float, IPv4Address, int, _Path]] = deque()  # (due, peer, key, path)
        # Nothing held is counted before this clock value (inf: the origins are not current).
        self._count_held_from = -math.inf
        self.router_id = router_id  # loop check: a route with it as ORIGINATOR_ID came back to us
        self.cluster_id: IPv4Address | None = None
        self.router_ids: dict[IPv4Address, IPv4Address] = {}  # each peer's BGP identifier (its OPEN)
        self._dirty: set[int] | None = None  # keys, for take_dirty(); None: nobody asked
        self._default_restart = restart_time
        self._restart_time: dict[IPv4Address, float | None] = {}
        self._restart_cap: dict[IPv4Address, float] = {}
        # Adj-RIB-In, unfiltered, by prefix key: {peer: {key: path}} and {peer: {key: (path, deadline)}}.
        self._fresh: dict[IPv4Address, dict[int, _Path]] = {}
        self._stale: dict[IPv4Address, dict[int, tuple[_Path, float]]] = {}
        self._deadlines: dict[IPv4Address, Counter[float]] = {}  # stale paths per deadline
        self._peer_ids: dict[IPv4Address, IPv4Address] = {}  # one object per peer: `is` compares
        # Accepted prefixes only (expiry not applied): {key: the chosen path}, and the keys whose
        # chosen path is a stale one (a fresh one beats it on arrival).
        self._best: dict[int, _Path] = {}
        self._stale_best: set[int] = set()
        self._mirror: IPv4Address | None = None  # the peer whose fresh dict is _best (_mirrors)
        self._frozen: frozenset[LearnedRoute] | None = None  # best(), until the next change
        # For take_changes(): the path each key had at the last call, recorded when the key first
        # changes after it; None until the first call (nobody asked: record nothing).
        self._before: dict[int, _Path | None] | None = None
        self.policy = ImportPolicy()
        self._ebgp: dict[IPv4Address, bool] = {}  # by peer; absent: iBGP
        self._max_prefixes: dict[IPv4Address, int] = {}
        self._exceeded: set[IPv4Address] = set()  # over the limit; cleared when the session goes down
        self._to_tear_down: list[IPv4Address] = []  # for take_exceeded()
        self.counters: Counter[str] = Counter()

    # -- configuration ----------------------------------------------------------------------

    def set_import_filter(self, pools: frozenset[IPv4Network], own_blocks: frozenset[IPv4Network]) -> bool:
        """Accept only prefixes inside a pool, outside our own blocks, not a default route.

        ``pools`` are all pools, disabled ones included: disabling a pool only stops new allocations,
        its pods keep their routes. Returns whether the filter changed (nothing to redo if not).
        """
        if not self.policy.set_filter(pools, own_blocks):
            return False
        self._rebuild_best()
        return True

    def set_origins(self, blocks: dict[IPv4Network, IPv4Address] | None,
                    borrowed: dict[IPv4Address, IPv4Address]) -> bool:
        """Who may originate what (``bgp.policy``): each block with an affinity -> its node's
        address, each borrowed address -> its holder's; ``blocks`` None: no origin validation.
        Only the prefixes whose owner changed are chosen again. Returns whether anything changed."""
        changed = self.policy.set_origins(blocks, borrowed)
        if changed is None:
            self._rebuild_best()
            return True
        for prefix in changed:
            self._choose(protocol.prefix_key(prefix))
        return bool(changed)

    def change_origins(self, blocks: dict[IPv4Network, IPv4Address | None],
                       borrowed: dict[IPv4Address, IPv4Address | None]) -> bool:
        """``set_origins`` by difference (``ImportPolicy.change_origins``): only the blocks and
        borrowed addresses given, None for one no longer owned. Returns whether anything changed."""
        changed = self.policy.change_origins(blocks, borrowed)
        for prefix in changed:
            self._choose(protocol.prefix_key(prefix))
        return bool(changed)

    def set_origins_current(self, current: bool) -> bool:
        """Whether the origins given are the datastore's current view. While they are not (the
        datastore is away, or not in sync again yet), a block claimed or an address borrowed
        meanwhile is unknown to us, not the peer's fault: a route rejected for its origin stays
        held and uncounted, however long the outage. Back in sync, each held route is counted
        only if still rejected ``origin_hold`` after that (the watch's news may still be on its
        way). Returns whether it changed (``next_deadline`` may have)."""
        if current == (self._count_held_from != math.inf):
            return False
        self._count_held_from = self._clock() + self.origin_hold if current else math.inf
        return True

    def set_peer_as(self, peer: IPv4Address, asn: int, local_asn: int) -> None:
        """The peer's AS and ours on that session: eBGP when they differ (best path prefers eBGP,
        and ignores an eBGP peer's LOCAL_PREF). Set before its routes arrive (session config)."""
        self._ebgp[peer] = asn != local_asn

    def set_max_prefixes(self, peer: IPv4Address, limit: int | None) -> None:
        """At most ``limit`` prefixes held from ``peer`` (None or 0: no limit)."""
        if limit is not None and limit < 0:
            raise ValueError(f"max prefixes for {peer}: {limit} is negative")
        if limit:
            self._max_prefixes[peer] = limit
        else:
            self._max_prefixes.pop(peer, None)

    def take_exceeded(self) -> list[IPv4Address]:
        """Peers that went over their max-prefix limit since the last call (tear them down)."""
        out, self._to_tear_down = self._to_tear_down, []
        return out

    def exceeded(self, peer: IPv4Address) -> bool:
        """Whether ``peer``'s current session went over its limit."""
        return peer in self._exceeded

    def set_cluster_id(self, cluster_id: IPv4Address | None) -> bool:
        """Our route-reflector cluster id (None: not a reflector). Paths already held that carry
        the new id in their CLUSTER_LIST are dropped as loops. Returns whether it changed."""
        if cluster_id == self.cluster_id:
            return False
        self.cluster_id = cluster_id
        if cluster_id is not None:
            for peer, paths in list(self._fresh.items()):
                looped = [k for k, path in paths.items() if cluster_id in path.cluster_list]
                if looped:
                    self.counters["rejected_cluster_loop"] += len(looped)
                    self.withdraw_many(peer, looped)
        return True

    def set_restart_cap(self, peer: IPv4Address, seconds: float) -> None:
        """The longest we keep ``peer``'s routes after it goes down, whatever its OPEN offered
        (``nodeMeshMaxRestartTime`` / BGPPeer ``maxRestartTime``): a dead peer that offered 4095 s
        must not keep its routes in our kernel for 68 minutes."""
        if seconds < 0:
            raise ValueError(f"restart cap for {peer}: {seconds} is negative")
        self._restart_cap[peer] = float(seconds)

    def rejection(self, prefix: IPv4Network, origin: IPv4Address | None = None) -> str | None:
        """Why the import policy rejects ``prefix`` from the node ``origin`` (a counter name), or
        None when it accepts it (``bgp.policy``)."""
        return self.policy.rejection(prefix, origin)

    # -- events -----------------------------------------------------------------------------

    def apply(self, event: protocol.Event) -> bool:
        """Feed one parsed protocol event; return whether best() may have changed."""
        match event:
            case protocol.RoutesAnnounced():
                e = event
                self.announce_many(e.peer, e.nexthop, e.keys, e.originator_id, e.cluster_list,
                                   e.attributes, origin=e.origin, as_path_len=e.as_path_len,
                                   neighbor_as=e.neighbor_as, local_pref=e.local_pref, med=e.med)
            case protocol.RoutesWithdrawn(peer, keys):
                self.withdraw_many(peer, keys)
            case protocol.EndOfRib(peer, family) if family == protocol.IPV4_UNICAST:
                self.end_of_rib(peer)
            case protocol.OpenReceived(peer, router_id, _, restart):
                self.router_ids[peer] = router_id
                self.set_restart_time(peer, restart)
                return False
            case protocol.PeerStateChanged(peer, "down", _):
                self.peer_down(peer)
            case protocol.Malformed():
                self.counters["malformed"] += 1
                return False
            case _:
                return False
        return True

    def announce(self, peer: IPv4Address, prefix: IPv4Network | int, nexthop: IPv4Address) -> None:
        self.announce_many(peer, nexthop, (prefix,))

    def announce_many(self, peer: IPv4Address, nexthop: IPv4Address, prefixes: Iterable[IPv4Network | int],
                      originator_id: IPv4Address | None = None,
                      cluster_list: tuple[IPv4Address, ...] = (), attributes: str = "", *,
                      origin: int = 0, as_path_len: int = 0, neighbor_as: int | None = None,
                      local_pref: int | None = None, med: int | None = None) -> None:
        """``prefixes`` (keys, or networks) from ``peer`` via ``nexthop``: the hot loop of
        learning (one UPDATE)."""
        keys, clean = _keys(prefixes)
        self.counters["received"] += len(keys)  # every announcement, accepted or not
        if not (isinstance(peer, IPv4Address) and isinstance(nexthop, IPv4Address)
                and not nexthop.is_unspecified):
            for key in keys:
                self._malformed(peer, key)
            return
        loop = self._loop(originator_id, cluster_list)
        if loop is not None:  # RFC 4456 8: drop it; it replaces (withdraws) the peer's last path
            self.counters[loop] += len(keys)
            log.debug("route dropped: reflection loop", extra={"peer": str(peer), "reason": loop})
            self.withdraw_many(peer, keys)
            return
        if peer in self._exceeded:
            self.counters["rejected_max_prefix"] += len(keys)
            return
        peer = self._peer_ids.setdefault(peer, peer)
        path = _Path(peer, nexthop, originator_id, tuple(cluster_list), attributes,
                     rank(local_pref, as_path_len, origin, self._ebgp.get(peer, False)), med or 0,
                     neighbor_as)
        if not clean:
            for bad in [k for k in keys if type(k) is not int]:
                self._malformed(peer, bad)
            keys = tuple(k for k in keys if type(k) is int)
        fresh = self._fresh.setdefault(peer, {})
        stale = self._stale.get(peer)
        accepted = self._accepted(keys, path)
        alone = self._alone(peer)
        if alone and len(accepted) == len(keys) and self._mirrors(peer, fresh):
            self._take_all(keys, path, keys)  # the best paths are ``fresh`` itself
            return self._check_limit(peer, fresh, stale)
        self._unmirror()
        for key in keys:
            fresh[key] = path
        if stale:
            for key in keys:
                self._unstale(peer, stale, key)
        # With no other peer holding paths (one upstream, the bench), this peer's path is the only
        # candidate: it replaces whatever best path the prefix had (its own, or its own stale one).
        if alone:
            self._take_all(accepted, path, keys)
        else:
            self._weigh(accepted, path, keys)
        self._check_limit(peer, fresh, stale)

    def _check_limit(self, peer: IPv4Address, fresh: dict, stale: dict | None) -> None:
        limit = self._max_prefixes.get(peer)
        if limit is not None and len(fresh) + len(stale or ()) > limit:
            self._exceed(peer, limit)

    def _mirrors(self, peer: IPv4Address, fresh: dict) -> bool:
        """Whether the best paths are (or may become) ``peer``'s Adj-RIB-In dict itself: one peer
        holds paths, none stale, every one accepted (one upstream, as in the bench). Then the RIB
        keeps one dict of 100k entries, not two (5 MB). Entered only from empty; anything else
        (another peer, a rejection, a stale path, a policy change) leaves it (``_unmirror``)."""
        if self._mirror is peer:
            return True
        if self._mirror is None and not self._best and not fresh and not any(self._stale.values()):
            self._best, self._mirror = fresh, peer
            return True
        return False

    def _unmirror(self) -> None:
        """The best paths become a dict of their own again (a copy, once)."""
        if self._mirror is not None:
            self._best, self._mirror = dict(self._best), None

    def _accepted(self, keys: tuple[int, ...], path: _Path) -> list[int] | tuple[int, ...]:
        """The keys the import policy accepts from ``path``'s origin; each rejection counted, an
        origin rejection once its hold is over (``_count_held``)."""
        accepted, rejected = self.policy.split(keys, path.origin_node._ip)
        if rejected:
            counters, hold, held, held_max = self.counters, self.origin_hold, self._held, self.held_max
            due = self._clock() + hold
            holding: set[int] = set()  # a prefix twice in one UPDATE is held (and counted) once,
            for key, reason in rejected:  # as when its second announcement replaces the first
                if hold > 0 and reason in ORIGIN_REASONS and len(held) < held_max:
                    if key not in holding:
                        holding.add(key)
                        held.append((due, path.peer, key, path))
                else:
                    counters[reason] += 1
                log.debug("route rejected by import policy", extra={
                    "peer": str(path.peer), "prefix": protocol.key_text(key), "reason": reason})
        return accepted

    def _take_all(self, accepted: list[int] | tuple[int, ...], path: _Path, keys: tuple[int, ...]) -> None:
        """The only peer with paths announced ``keys``: the accepted ones have ``path`` as their
        best path, the rejected ones (``keys`` not in ``accepted``) none. While the best paths
        mirror that peer's Adj-RIB-In (``_mirrors``), ``keys`` are all accepted and this writes
        them there."""
        best = self._best
        if len(accepted) != len(keys):
            taken = set(accepted)
            for key in keys:
                if key not in taken and key in best:
                    self._record(key, best.pop(key))
            self._stale_best.difference_update(keys)
        elif self._stale_best:
            self._stale_best.difference_update(keys)
        self._record_many(accepted, map(best.get, accepted))
        best.update(zip(accepted, repeat(path)))  # a third faster than dict.fromkeys here

    def _weigh(self, accepted: list[int] | tuple[int, ...], path: _Path, keys: tuple[int, ...]) -> None:
        """Several peers hold paths: each key's candidates are weighed again (per route: the
        peers holding it, at most), unless the key had no accepted path or only a stale one."""
        best, stale_best, peer = self._best, self._stale_best, path.peer
        taken = set(accepted)
        for key in keys:
            current = best.get(key)
            if key not in taken:  # it replaced (withdrew) this peer's accepted path, if any
                if current is not None and current.peer is peer:
                    self._choose(key)
            elif current is None or key in stale_best:
                self._record(key, current)
                stale_best.discard(key)
                best[key] = path
            else:
                self._choose(key)

    def _alone(self, peer: IPv4Address) -> bool:
        return not any(paths for other, paths in (*self._fresh.items(), *self._stale.items())
                       if other is not peer)

    def _exceed(self, peer: IPv4Address, limit: int) -> None:
        """``peer`` sent more than ``limit`` prefixes: drop them all, ignore it until it goes down."""
        held = len(self._fresh.get(peer, ())) + len(self._stale.get(peer, ()))
        log.warning("peer exceeded its max-prefix limit; tearing the session down",
                    extra={"peer": str(peer), "limit": limit, "held": held})
        self.counters["max_prefix_exceeded"] += 1
        self.counters["rejected_max_prefix"] += held
        self._exceeded.add(peer)
        self._to_tear_down.append(peer)
        self._forget(peer, keep_ids=True)

    def withdraw(self, peer: IPv4Address, prefix: IPv4Network | int) -> None:
        self.withdraw_many(peer, (prefix,))

    def withdraw_many(self, peer: IPv4Address, prefixes: Iterable[IPv4Network | int]) -> None:
        keys, clean = _keys(prefixes)
        if not clean:  # anything else was never announced
            keys = [k for k in keys if type(k) is int]
        peer = self._peer_ids.get(peer, peer)
        fresh, stale = self._fresh.get(peer, {}), self._stale.get(peer)
        if self._mirror is peer:  # its paths are the best paths: a withdrawn one simply goes
            self._drop_best(keys)
            return
        self._unmirror()
        best = self._best
        if self._alone(peer):
            # One upstream (the bench): a withdrawn best path simply goes (fresh and stale paths
            # of one peer never share a prefix).
            list(map(fresh.pop, keys, repeat(None)))
            if stale:
                for key in keys:
                    self._unstale(peer, stale, key)
            self._drop_best(keys)
            if self._stale_best:
                self._stale_best.difference_update(keys)
            return
        for key in keys:
            gone = fresh.pop(key, None) is not None
            if stale:
                gone |= self._unstale(peer, stale, key)
            current = best.get(key) if gone else None
            if current is not None and current.peer is peer:
                self._choose(key)

    def _loop(self, originator_id: IPv4Address | None, cluster_list: tuple[IPv4Address, ...]) -> str | None:
        """The counter of the RFC 4456 loop a route's attributes show, or None."""
        if originator_id is not None and originator_id == self.router_id:
            return "rejected_originator_loop"
        if self.cluster_id is not None and self.cluster_id in cluster_list:
            return "rejected_cluster_loop"
        return None

    def _malformed(self, peer: object, prefix: object) -> None:
        self.counters["malformed"] += 1
        shown = protocol.key_text(prefix) if type(prefix) is int else str(prefix)
        log.warning("dropped malformed route", extra={"peer": str(peer), "prefix": shown})

    def _unstale(self, peer: IPv4Address, stale: dict, key: int) -> bool:
        entry = stale.pop(key, None)
        if entry is None:
            return False
        deadlines = self._deadlines[peer]
        deadlines[entry[1]] -= 1
        if not deadlines[entry[1]]:
            del deadlines[entry[1]]
        return True

    def set_restart_time(self, peer: IPv4Address, seconds: int | None) -> None:
        """The restart time the peer offered in its OPEN; None: no graceful restart capability."""
        self._restart_time[peer] = None if seconds is None else float(seconds)

    def restart_time(self, peer: IPv4Address) -> float | None:
        """How long ``peer``'s routes are kept once it goes down: what it offered, at most its cap."""
        offered = self._restart_time.get(peer, self._default_restart)
        if offered is None:
            return None
        return min(offered, self._restart_cap.get(peer, offered))

    def peer_down(self, peer: IPv4Address, graceful: bool = True) -> None:
        """Keep the peer's routes as stale for its restart time; drop them, stale ones included,
        if it offered none or the session did not end gracefully (a NOTIFICATION ended it)."""
        self._unmirror()
        peer = self._peer_ids.get(peer, peer)
        self._exceeded.discard(peer)  # a new session starts a new count
        fresh = self._fresh.pop(peer, {})
        restart = self.restart_time(peer) if graceful else None
        if not restart:
            self._forget(peer, keep_ids=True)
            self._rechoose(fresh)
            return
        deadline = self._clock() + restart
        stale = self._stale.setdefault(peer, {})
        before = len(stale)
        for key, path in fresh.items():
            if key not in stale:  # a path already stale keeps its earlier deadline
                stale[key] = (path, deadline)
        if len(stale) > before:  # never a zero count: next_deadline() reads the keys
            self._deadlines.setdefault(peer, Counter())[deadline] += len(stale) - before
        self._rechoose(fresh)

    def end_of_rib(self, peer: IPv4Address) -> None:
        """The peer re-sent everything: whatever is still stale was not re-announced."""
        self._unmirror()
        self.counters["end_of_rib_received"] += 1
        peer = self._peer_ids.get(peer, peer)
        stale = self._stale.pop(peer, {})
        self._deadlines.pop(peer, None)
        self._rechoose(stale)

    def remove_peer(self, peer: IPv4Address) -> None:
        """The session is no longer configured: forget it, stale routes included."""
        self._forget(peer, keep_ids=False)
        self._restart_time.pop(peer, None)
        self._restart_cap.pop(peer, None)
        self.router_ids.pop(peer, None)
        self._ebgp.pop(peer, None)
        self._max_prefixes.pop(peer, None)
        self._exceeded.discard(peer)

    def _forget(self, peer: IPv4Address, *, keep_ids: bool) -> None:
        self._unmirror()
        peer = self._peer_ids.get(peer, peer)
        fresh, stale = self._fresh.pop(peer, {}), self._stale.pop(peer, {})
        self._deadlines.pop(peer, None)
        if any(entry[1] == peer for entry in self._held):  # held routes go with the peer's routes:
            # skipped when due anyway, but until then they took room under held_max
            self._held = deque(entry for entry in self._held if entry[1] != peer)
        if not keep_ids:
            self._peer_ids.pop(peer, None)
        self._rechoose(fresh)
        self._rechoose(stale)

    def expire(self) -> bool:
        """Drop stale routes whose restart time has passed, and count the held routes still
        rejected at the end of their hold; return whether anything was dropped."""
        now, dropped = self._clock(), False
        self._count_held(now)
        for peer, deadlines in list(self._deadlines.items()):
            if not any(d <= now for d in deadlines):
                continue
            stale = self._stale[peer]
            gone = [k for k, (_, deadline) in stale.items() if deadline <= now]
            for key in gone:
                self._unstale(peer, stale, key)
            self._rechoose(gone)
            dropped = True
        return dropped

    def next_deadline(self) -> float | None:
        """The clock value at which the next stale route expires or held route is due, if any."""
        due = [d for deadlines in self._deadlines.values() for d in deadlines]
        if self._held and self._count_held_from != math.inf:
            due.append(max(self._held[0][0], self._count_held_from))
        return min(due, default=None)

    def _count_held(self, now: float) -> None:
        """Count each held route due by ``now`` that the peer still has and that is still rejected."""
        held = self._held
        if now < self._count_held_from:
            return
        while held and held[0][0] <= now:
            _, peer, key, path = held.popleft()
            stale = self._stale.get(peer, {}).get(key)
            if self._fresh.get(peer, {}).get(key) is not path and (stale is None or stale[0] is not path):
                continue  # withdrawn or replaced meanwhile: a replacement is judged on its own
            reason = self.policy.rejection_key(key, path.origin_node._ip)
            if reason is not None:
                self.counters[reason] += 1
                log.debug("route rejected by import policy after its hold", extra={
                    "peer": str(peer), "prefix": protocol.key_text(key), "reason": reason})

    # -- best paths -------------------------------------------------------------------------

    def _rechoose(self, keys: Iterable[int]) -> None:
        for key in keys:
            self._choose(key)

    def _choose(self, key: int) -> None:
        """Pick ``key``'s best path again from every peer's paths (after one of them changed)."""
        self._unmirror()
        chosen, stale = self._candidate(key, None)
        best = self._best
        self._record(key, best.get(key))
        if chosen is None:
            best.pop(key, None)
        else:
            best[key] = chosen
        if stale:
            self._stale_best.add(key)
        else:
            self._stale_best.discard(key)

    def _record(self, key: int, current: _Path | None) -> None:
        """Before ``key``'s best path changes: remember what take_changes() last reported."""
        self._frozen = None
        before = self._before
        if before is not None and key not in before:
            before[key] = current
        if self._dirty is not None:
            self._dirty.add(key)

    def _record_many(self, keys: Sequence[int], paths: Iterable[_Path | None]) -> None:
        """``_record`` of each of ``keys``, ``paths`` what each has now, in C (a burst is 100k;
        one ``setdefault`` is one lookup, where a test then an insert was two)."""
        self._frozen = None
        if self._before is not None:
            _consume(map(self._before.setdefault, keys, paths))
        if self._dirty is not None:
            self._dirty.update(keys)

    def _drop_best(self, keys: Sequence[int]) -> None:
        """The best paths of ``keys`` go, with nothing in their place (one peer's withdrawal)."""
        olds = list(map(self._best.pop, keys, repeat(None)))
        self._record_many(list(compress(keys, olds)), filter(None, olds))  # a path is true

    def _candidate(self, key: int, now: float | None) -> tuple[_Path | None, bool]:
        """The best accepted path of ``key`` and whether it is stale: fresh ones first, then
        unexpired stale ones."""
        rejection = self.policy.rejection_key
        fresh = [self._as_candidate(path) for paths in self._fresh.values()
                 if (path := paths.get(key)) is not None
                 and rejection(key, path.origin_node._ip) is None]
        if fresh:
            return select(fresh).path, False
        stale = [self._as_candidate(entry[0]) for paths in self._stale.values()
                 if (entry := paths.get(key)) is not None and (now is None or entry[1] > now)
                 and rejection(key, entry[0].origin_node._ip) is None]
        if stale:
            return select(stale).path, True
        return None, False

    def _as_candidate(self, path: _Path) -> Candidate:
        peer = path.peer
        return Candidate(peer, path, self._ebgp.get(peer, False), self.router_ids.get(peer, peer))

    def _rebuild_best(self) -> None:
        self._unmirror()
        keys = {k for paths in (*self._fresh.values(), *self._stale.values()) for k in paths}
        for key in keys | self._best.keys():
            self._record(key, self._best.get(key))
        self._best, self._stale_best, self._frozen = {}, set(), None
        for key in keys:
            chosen, stale = self._candidate(key, None)
            if chosen is not None:
                self._best[key] = chosen
                if stale:
                    self._stale_best.add(key)

    # -- results ----------------------------------------------------------------------------

    def best(self) -> frozenset[LearnedRoute]:
        """One route per accepted prefix: fresh beats stale, then the lowest peer address.

        A stale route past its deadline is never best, even before ``expire()`` dropped it.
        Kept until the next change (a count is ``best_count()``).
        """
        deadline = self.next_deadline()
        if deadline is not None and deadline <= self._clock():
            return self._best_unexpired()
        if self._frozen is None:
            self._frozen = frozenset(_views(self._best.items()))
        return self._frozen

    def best_count(self) -> int:
        """How many prefixes have a best path (stale ones included until ``expire()``)."""
        return len(self._best)

    def _best_unexpired(self) -> frozenset[LearnedRoute]:
        """The rare case between a deadline and ``expire()``: recompute the stale prefixes."""
        now = self._clock()
        out = []
        for key, path in self._best.items():
            if key in self._stale_best:
                path, _ = self._candidate(key, now)
            if path is not None:
                out.append(_view(key, path))
        return frozenset(out)

    def take_changes(self) -> tuple[list[LearnedRoute], list[LearnedRoute]]:
        """(removed, added) best routes since the last call, for a consumer that keeps its own copy
        (the first call: everything is added). Work is per changed prefix, not per route held.

        Applying them in that order to the previous answer gives ``best()``, except for a stale
        route past its deadline: ``best()`` hides it at once, here it goes when ``expire()`` runs
        (the speaker's timer calls it at the deadline).
        """
        (gone, old), (came, new) = self.take_change_columns()
        return _views(zip(gone, old)), _views(zip(came, new))

    def take_change_columns(self) -> tuple[tuple[list[int], list[_Path]], tuple[list[int], list[_Path]]]:
        """``take_changes`` as columns, ((removed keys, their paths), (added keys, their paths)),
        the i-th path beside the i-th key: no object per route (``felix.cluster.learned_pairs``
        turns them into the calculation's input). A path is shared by the routes of one UPDATE.
        """
        best = self._best
        if self._before is None:
            self._before = {}
            return ([], []), (list(best), list(best.values()))
        before, self._before = self._before, {}
        # In C over the changed keys (a burst: 100k), as columns: a key changed when its path is
        # another object, and another route, not a re-announcement of the same next hop, peer,
        # ORIGINATOR_ID and CLUSTER_LIST by a later UPDATE (only those are compared in Python).
        keys, olds = list(before), list(before.values())
        news = list(map(best.get, keys))
        # A path is true, None false: a burst that only adds (learn) or only removes (withdraw)
        # is two filters.
        if not any(olds):
            return ([], []), (list(compress(keys, news)), list(filter(None, news)))
        if not any(news):
            return (list(compress(keys, olds)), list(filter(None, olds))), ([], [])
        changed = list(map(is_not, olds, news))
        had = list(map(is_not, olds, repeat(None)))
        has = list(map(is_not, news, repeat(None)))
        for i in compress(range(len(keys)), map(and_, map(and_, changed, had), has)):
            changed[i] = olds[i].ident != news[i].ident
        gone, came = list(map(and_, changed, had)), list(map(and_, changed, has))
        return ((list(compress(keys, gone)), list(compress(olds, gone))),
                (list(compress(keys, came)), list(compress(news, came))))

    def track_dirty(self, on: bool) -> None:
        """Record, for ``take_dirty()``, which prefixes' best paths change (only a route reflector
        needs it: the rest of the time it would be a set add per route for nobody)."""
        if on and self._dirty is None:
            self._dirty = set()
        elif not on:
            self._dirty = None

    def take_dirty(self) -> set[IPv4Network]:
        """Prefixes whose best path may have changed since the last call (for the reflector, a
        second consumer beside take_changes()); nothing unless ``track_dirty(True)``."""
        if not self._dirty:
            return set()
        dirty, self._dirty = self._dirty, set()
        return set(map(protocol.key_network, dirty))

    def best_routes(self) -> list[LearnedRoute]:
        """Every best path, stale ones included until ``expire()`` drops them."""
        return _views(self._best.items())

    def best_route(self, prefix: IPv4Network | int) -> LearnedRoute | None:
        """The best path of ``prefix`` (a stale one too, until ``expire()`` drops it)."""
        key = _key(prefix)
        path = self._best.get(key)
        return _view(key, path) if path is not None else None

    def provided(self, peer: IPv4Address) -> frozenset[IPv4Network]:
        """The prefixes ``peer`` gives us that the import filter accepts, stale ones included
        (what we would lose without it; ``bgp.transition`` waits for another session to cover them)."""
        peer = self._peer_ids.get(peer, peer)
        rejection = self.policy.rejection_key
        fresh = [k for k, path in self._fresh.get(peer, {}).items()
                 if rejection(k, path.origin_node._ip) is None]
        stale = [k for k, (path, _) in self._stale.get(peer, {}).items()
                 if rejection(k, path.origin_node._ip) is None]
        return frozenset(map(protocol.key_network, (*fresh, *stale)))

    def route_count(self, peer: IPv4Address) -> int:
        peer = self._peer_ids.get(peer, peer)
        return len(self._fresh.get(peer, {})) + len(self._stale.get(peer, {}))
