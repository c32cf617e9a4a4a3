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
rejection counters count announcements when they arrive, against the policy of that moment.

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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from bgp import protocol
from bgp.policy import Candidate, ImportPolicy, rank, select

log = logging.getLogger(__name__)

DEFAULT_RESTART_TIME = 120.0


@dataclass(frozen=True, slots=True)
class LearnedRoute:
    prefix: IPv4Network
    nexthop: IPv4Address
    peer: IPv4Address
    originator_id: IPv4Address | None = None  # set when it came through a route reflector
    cluster_list: tuple[IPv4Address, ...] = ()
    # What a reflector passes on unchanged (protocol.RoutesAnnounced.attributes); not compared:
    # the kernel route does not depend on it.
    attributes: str = field(default="", compare=False)
    # Cached: best() builds a frozenset of every route, and the fields' hashes are Python code
    # (~1.5 us per route); a route object lives as long as it stays the best path. Slots: 100k
    # routes take 15 MB instead of 25.
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash((self.prefix, self.nexthop, self.peer))
            object.__setattr__(self, "_hash", cached)
        return cached


@dataclass(frozen=True, slots=True)
class _Path:
    """What one UPDATE said about its prefixes (shared by all of them: one object per UPDATE).
    ``rank``: ``policy.rank`` of its LOCAL_PREF, AS_PATH length and ORIGIN."""

    nexthop: IPv4Address
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    attributes: str = ""
    rank: tuple[int, int, int] = (-100, 0, 0)
    med: int = 0
    neighbor_as: int | None = None

    @property
    def origin_node(self) -> IPv4Address:
        """The node the path claims to come from: ORIGINATOR_ID through a reflector, else the
        next hop."""
        return self.originator_id if self.originator_id is not None else self.nexthop

    def route(self, prefix: IPv4Network, peer: IPv4Address) -> LearnedRoute:
        return LearnedRoute(prefix, self.nexthop, peer, self.originator_id, self.cluster_list,
                            self.attributes)


class _Best:
    """The chosen path of one prefix; ``stale``: from a peer that went down (fresh wins)."""

    __slots__ = ("route", "stale")

    def __init__(self, route: LearnedRoute, stale: bool) -> None:
        self.route, self.stale = route, stale


class Rib:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 restart_time: float = DEFAULT_RESTART_TIME, router_id: IPv4Address | None = None) -> None:
        self._clock = clock
        self.router_id = router_id  # loop check: a route with it as ORIGINATOR_ID came back to us
        self.cluster_id: IPv4Address | None = None
        self.router_ids: dict[IPv4Address, IPv4Address] = {}  # each peer's BGP identifier (its OPEN)
        self._dirty: set[IPv4Network] | None = None  # for take_dirty(); None: nobody asked
        self._default_restart = restart_time
        self._restart_time: dict[IPv4Address, float | None] = {}
        self._restart_cap: dict[IPv4Address, float] = {}
        # Adj-RIB-In, unfiltered: {peer: {prefix: path}} and {peer: {prefix: (path, deadline)}}.
        self._fresh: dict[IPv4Address, dict[IPv4Network, _Path]] = {}
        self._stale: dict[IPv4Address, dict[IPv4Network, tuple[_Path, float]]] = {}
        self._deadlines: dict[IPv4Address, Counter[float]] = {}  # stale paths per deadline
        self._peer_ids: dict[IPv4Address, IPv4Address] = {}  # one object per peer: `is` compares
        self._best: dict[IPv4Network, _Best] = {}  # accepted prefixes only; expiry not applied
        self._frozen: frozenset[LearnedRoute] | None = None
        # For take_changes(): the best route each prefix had at the last call, recorded when the
        # prefix first changes after it; None until the first call (nobody asked: record nothing).
        self._before: dict[IPv4Network, LearnedRoute | None] | None = None
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
            self._choose(prefix)
        return bool(changed)

    def change_origins(self, blocks: dict[IPv4Network, IPv4Address | None],
                       borrowed: dict[IPv4Address, IPv4Address | None]) -> bool:
        """``set_origins`` by difference (``ImportPolicy.change_origins``): only the blocks and
        borrowed addresses given, None for one no longer owned. Returns whether anything changed."""
        changed = self.policy.change_origins(blocks, borrowed)
        for prefix in changed:
            self._choose(prefix)
        return bool(changed)

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
                looped = [p for p, path in paths.items() if cluster_id in path.cluster_list]
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
                self.announce_many(e.peer, e.nexthop, e.prefixes, e.originator_id, e.cluster_list,
                                   e.attributes, origin=e.origin, as_path_len=e.as_path_len,
                                   neighbor_as=e.neighbor_as, local_pref=e.local_pref, med=e.med)
            case protocol.RoutesWithdrawn(peer, prefixes):
                self.withdraw_many(peer, prefixes)
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

    def announce(self, peer: IPv4Address, prefix: IPv4Network, nexthop: IPv4Address) -> None:
        self.announce_many(peer, nexthop, (prefix,))

    def announce_many(self, peer: IPv4Address, nexthop: IPv4Address, prefixes: Iterable[IPv4Network],
                      originator_id: IPv4Address | None = None,
                      cluster_list: tuple[IPv4Address, ...] = (), attributes: str = "", *,
                      origin: int = 0, as_path_len: int = 0, neighbor_as: int | None = None,
                      local_pref: int | None = None, med: int | None = None) -> None:
        """``prefixes`` from ``peer`` via ``nexthop``: the hot loop of learning (one UPDATE)."""
        if type(prefixes) is not tuple:
            prefixes = tuple(prefixes)
        self.counters["received"] += len(prefixes)  # every announcement, accepted or not
        if not (isinstance(peer, IPv4Address) and isinstance(nexthop, IPv4Address)
                and not nexthop.is_unspecified):
            for prefix in prefixes:
                self._malformed(peer, prefix)
            return
        loop = self._loop(originator_id, cluster_list)
        if loop is not None:  # RFC 4456 8: drop it; it replaces (withdraws) the peer's last path
            prefixes = tuple(prefixes)
            self.counters[loop] += len(prefixes)
            log.debug("route dropped: reflection loop", extra={"peer": str(peer), "reason": loop})
            self.withdraw_many(peer, prefixes)
            return
        if peer in self._exceeded:
            self.counters["rejected_max_prefix"] += len(prefixes)
            return
        ebgp = self._ebgp.get(peer, False)
        path = _Path(nexthop, originator_id, tuple(cluster_list), attributes,
                     rank(local_pref, as_path_len, origin, ebgp), med or 0, neighbor_as)
        peer = self._peer_ids.setdefault(peer, peer)
        fresh = self._fresh.setdefault(peer, {})
        stale = self._stale.get(peer)
        best, rejection, counters, before = self._best, self.policy.rejection, self.counters, self._before
        dirty, source = self._dirty, path.origin_node._ip
        # With no other peer holding paths (one upstream, the bench), this peer's path is the only
        # candidate: it replaces whatever best path the prefix had (its own, or its own stale one).
        alone = not any(paths for other, paths in (*self._fresh.items(), *self._stale.items())
                        if other is not peer)
        for prefix in prefixes:
            if type(prefix) is not protocol.Prefix and type(prefix) is not IPv4Network:
                self._malformed(peer, prefix)
                continue
            fresh[prefix] = path
            if stale:
                self._unstale(peer, stale, prefix)
            reason = rejection(prefix, source)
            if reason is not None:
                counters[reason] += 1
                log.debug("route rejected by import policy",
                          extra={"peer": str(peer), "prefix": str(prefix), "reason": reason})
                if not alone and prefix in best and best[prefix].route.peer is peer:
                    self._choose(prefix)  # it replaced (withdrew) this peer's accepted path
                elif alone and prefix in best:
                    self._record(prefix, best.pop(prefix))
                    self._frozen = None
                continue
            current = best.get(prefix)
            # No accepted path yet, or only a stale one: this fresh one is best. Otherwise every
            # candidate of the prefix is weighed again (per route: the peers holding it, at most).
            if current is None or current.stale or alone:
                if before is not None and prefix not in before:
                    before[prefix] = current.route if current is not None else None
                if dirty is not None:
                    dirty.add(prefix)
                best[prefix] = _Best(path.route(prefix, peer), False)
                self._frozen = None
            else:
                self._choose(prefix)
        limit = self._max_prefixes.get(peer)
        if limit is not None and len(fresh) + len(stale or ()) > limit:
            self._exceed(peer, limit)

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

    def withdraw(self, peer: IPv4Address, prefix: IPv4Network) -> None:
        self.withdraw_many(peer, (prefix,))

    def withdraw_many(self, peer: IPv4Address, prefixes: Iterable[IPv4Network]) -> None:
        peer = self._peer_ids.get(peer, peer)
        fresh, stale = self._fresh.get(peer, {}), self._stale.get(peer)
        best = self._best
        # With no other peer holding paths (one upstream, the bench), a withdrawn best path simply
        # goes: fresh and stale paths of one peer never share a prefix.
        alone = not any(paths for other, paths in (*self._fresh.items(), *self._stale.items())
                        if other is not peer)
        for prefix in prefixes:
            gone = fresh.pop(prefix, None) is not None
            if stale:
                gone |= self._unstale(peer, stale, prefix)
            if alone:  # every best path is this peer's, and one it no longer has must go
                current = best.pop(prefix, None)
                if current is not None:
                    self._record(prefix, current)
                    self._frozen = None
                continue
            current = best.get(prefix) if gone else None
            if current is not None and current.route.peer is peer:
                self._choose(prefix)

    def _loop(self, originator_id: IPv4Address | None, cluster_list: tuple[IPv4Address, ...]) -> str | None:
        """The counter of the RFC 4456 loop a route's attributes show, or None."""
        if originator_id is not None and originator_id == self.router_id:
            return "rejected_originator_loop"
        if self.cluster_id is not None and self.cluster_id in cluster_list:
            return "rejected_cluster_loop"
        return None

    def _malformed(self, peer: object, prefix: object) -> None:
        self.counters["malformed"] += 1
        log.warning("dropped malformed route", extra={"peer": str(peer), "prefix": str(prefix)})

    def _unstale(self, peer: IPv4Address, stale: dict, prefix: IPv4Network) -> bool:
        entry = stale.pop(prefix, None)
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

    def peer_down(self, peer: IPv4Address) -> None:
        """Keep the peer's routes as stale for its restart time (drop them if it offered none)."""
        peer = self._peer_ids.get(peer, peer)
        self._exceeded.discard(peer)  # a new session starts a new count
        fresh = self._fresh.pop(peer, {})
        restart = self.restart_time(peer)
        if not restart:
            self._forget(peer, keep_ids=True)
            self._rechoose(fresh)
            return
        deadline = self._clock() + restart
        stale = self._stale.setdefault(peer, {})
        before = len(stale)
        for prefix, path in fresh.items():
            if prefix not in stale:  # a path already stale keeps its earlier deadline
                stale[prefix] = (path, deadline)
        if len(stale) > before:  # never a zero count: next_deadline() reads the keys
            self._deadlines.setdefault(peer, Counter())[deadline] += len(stale) - before
        self._rechoose(fresh)

    def end_of_rib(self, peer: IPv4Address) -> None:
        """The peer re-sent everything: whatever is still stale was not re-announced."""
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
        peer = self._peer_ids.get(peer, peer)
        fresh, stale = self._fresh.pop(peer, {}), self._stale.pop(peer, {})
        self._deadlines.pop(peer, None)
        if not keep_ids:
            self._peer_ids.pop(peer, None)
        self._rechoose(fresh)
        self._rechoose(stale)

    def expire(self) -> bool:
        """Drop stale routes whose restart time has passed; return whether anything was dropped."""
        now, dropped = self._clock(), False
        for peer, deadlines in list(self._deadlines.items()):
            if not any(d <= now for d in deadlines):
                continue
            stale = self._stale[peer]
            gone = [p for p, (_, deadline) in stale.items() if deadline <= now]
            for prefix in gone:
                self._unstale(peer, stale, prefix)
            self._rechoose(gone)
            dropped = True
        return dropped

    def next_deadline(self) -> float | None:
        """The clock value at which the next stale route expires, if any."""
        return min((d for deadlines in self._deadlines.values() for d in deadlines), default=None)

    # -- best paths -------------------------------------------------------------------------

    def _rechoose(self, prefixes: Iterable[IPv4Network]) -> None:
        for prefix in prefixes:
            self._choose(prefix)

    def _choose(self, prefix: IPv4Network) -> None:
        """Pick ``prefix``'s best path again from every peer's paths (after one of them changed)."""
        self._frozen = None
        chosen = self._candidate(prefix, None)
        self._record(prefix, self._best.get(prefix))
        if chosen is None:
            self._best.pop(prefix, None)
        else:
            self._best[prefix] = chosen

    def _record(self, prefix: IPv4Network, current: _Best | None) -> None:
        """Before ``prefix``'s best path changes: remember what take_changes() last reported."""
        before = self._before
        if before is not None and prefix not in before:
            before[prefix] = current.route if current is not None else None
        if self._dirty is not None:
            self._dirty.add(prefix)

    def _candidate(self, prefix: IPv4Network, now: float | None) -> _Best | None:
        """The best accepted path of ``prefix``: fresh ones first, then unexpired stale ones."""
        rejection = self.policy.rejection
        fresh = [self._as_candidate(peer, path) for peer, paths in self._fresh.items()
                 if (path := paths.get(prefix)) is not None
                 and rejection(prefix, path.origin_node) is None]
        if fresh:
            chosen = select(fresh)
            return _Best(chosen.path.route(prefix, chosen.peer), False)
        stale = [self._as_candidate(peer, entry[0]) for peer, paths in self._stale.items()
                 if (entry := paths.get(prefix)) is not None and (now is None or entry[1] > now)
                 and rejection(prefix, entry[0].origin_node) is None]
        if stale:
            chosen = select(stale)
            return _Best(chosen.path.route(prefix, chosen.peer), True)
        return None

    def _as_candidate(self, peer: IPv4Address, path: _Path) -> Candidate:
        return Candidate(peer, path, self._ebgp.get(peer, False), self.router_ids.get(peer, peer))

    def _rebuild_best(self) -> None:
        prefixes = {p for paths in (*self._fresh.values(), *self._stale.values()) for p in paths}
        for prefix in prefixes | self._best.keys():
            self._record(prefix, self._best.get(prefix))
        self._best = {}
        self._frozen = None
        for prefix in prefixes:
            chosen = self._candidate(prefix, None)
            if chosen is not None:
                self._best[prefix] = chosen

    # -- results ----------------------------------------------------------------------------

    def best(self) -> frozenset[LearnedRoute]:
        """One route per accepted prefix: fresh beats stale, then the lowest peer address.

        A stale route past its deadline is never best, even before ``expire()`` dropped it.
        """
        deadline = self.next_deadline()
        if deadline is not None and deadline <= self._clock():
            return self._best_unexpired()
        if self._frozen is None:
            self._frozen = frozenset(b.route for b in self._best.values())
        return self._frozen

    def _best_unexpired(self) -> frozenset[LearnedRoute]:
        """The rare case between a deadline and ``expire()``: recompute the stale prefixes."""
        now = self._clock()
        out = []
        for prefix, chosen in self._best.items():
            if chosen.stale:
                again = self._candidate(prefix, now)
                if again is not None:
                    out.append(again.route)
            else:
                out.append(chosen.route)
        return frozenset(out)

    def take_changes(self) -> tuple[list[LearnedRoute], list[LearnedRoute]]:
        """(removed, added) best routes since the last call, for a consumer that keeps its own copy
        (the first call: everything is added). Work is per changed prefix, not per route held.

        Applying them in that order to the previous answer gives ``best()``, except for a stale
        route past its deadline: ``best()`` hides it at once, here it goes when ``expire()`` runs
        (the speaker's timer calls it at the deadline).
        """
        if self._before is None:
            self._before = {}
            return [], [b.route for b in self._best.values()]
        removed, added = [], []
        for prefix, old in self._before.items():
            current = self._best.get(prefix)
            new = current.route if current is not None else None
            if old is new or (old is not None and new is not None and old == new):
                continue  # (None == route would go through the dataclass's __eq__ for nothing)
            if old is not None:
                removed.append(old)
            if new is not None:
                added.append(new)
        self._before = {}
        return removed, added

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
        return dirty

    def best_routes(self) -> list[LearnedRoute]:
        """Every best path, stale ones included until ``expire()`` drops them."""
        return [b.route for b in self._best.values()]

    def best_route(self, prefix: IPv4Network) -> LearnedRoute | None:
        """The best path of ``prefix`` (a stale one too, until ``expire()`` drops it)."""
        chosen = self._best.get(prefix)
        return chosen.route if chosen is not None else None

    def provided(self, peer: IPv4Address) -> frozenset[IPv4Network]:
        """The prefixes ``peer`` gives us that the import filter accepts, stale ones included
        (what we would lose without it; ``bgp.transition`` waits for another session to cover them)."""
        peer = self._peer_ids.get(peer, peer)
        rejection = self.policy.rejection
        fresh = [p for p, path in self._fresh.get(peer, {}).items()
                 if rejection(p, path.origin_node) is None]
        stale = [p for p, (path, _) in self._stale.get(peer, {}).items()
                 if rejection(p, path.origin_node) is None]
        return frozenset((*fresh, *stale))

    def route_count(self, peer: IPv4Address) -> int:
        peer = self._peer_ids.get(peer, peer)
        return len(self._fresh.get(peer, {})) + len(self._stale.get(peer, {}))

