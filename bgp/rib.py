"""Adj-RIB-In per peer, import filter, best path, route-reflection loop checks (RFC 4456 8) and
graceful-restart (RFC 4724 helper) retention.

Purely computational; no I/O. Time comes from an injected clock, so stale-route expiry is tested
with a fake one.

ExaBGP keeps none of this for us (no best path, no retention of a restarting peer's routes), so
the speaker feeds every parsed event here and asks ``best()`` for what may reach the kernel.

Loop checks run on receipt, on every node: a route whose ORIGINATOR_ID is our router id, or whose
CLUSTER_LIST holds our cluster id, is dropped (counted) and replaces, i.e. withdraws, what that
peer sent before for the prefix. ``bgp.reflect`` reflects the best paths; ``take_dirty()`` tells
it which prefixes' best paths may have changed.

The Adj-RIB-In keeps what peers sent before filtering, and ``best()`` filters against the current
pools: a pool created after a peer announced a block then takes effect without a route refresh.
The rejection counters count announcements when they arrive, against the filter of that moment.

Work per route is constant: the best path of a prefix is kept up to date as its paths change
(only that prefix's candidates are looked at), ``best()`` returns a cached frozenset until the
next change, and each route's hash is computed once. A route learned from 100k prefixes no
longer costs a full pass over the table per UPDATE or per reconcile.

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
    """What one UPDATE said about its prefixes (shared by all of them: one object per UPDATE)."""

    nexthop: IPv4Address
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    attributes: str = ""

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
        self._pools: frozenset[IPv4Network] = frozenset()
        self._own: frozenset[IPv4Network] = frozenset()
        self._pool_bits: tuple[tuple[int, int], ...] = ()
        self._own_bits: tuple[tuple[int, int], ...] = ()
        self.counters: Counter[str] = Counter()

    # -- configuration ----------------------------------------------------------------------

    def set_import_filter(self, pools: frozenset[IPv4Network], own_blocks: frozenset[IPv4Network]) -> bool:
        """Accept only prefixes inside a pool, outside our own blocks, not a default route.

        ``pools`` are all pools, disabled ones included: disabling a pool only stops new allocations,
        its pods keep their routes. Returns whether the filter changed (nothing to redo if not).
        """
        pools, own_blocks = frozenset(pools), frozenset(own_blocks)
        if (pools, own_blocks) == (self._pools, self._own):
            return False
        self._pools, self._own = pools, own_blocks
        self._pool_bits, self._own_bits = _bits(pools), _bits(own_blocks)
        self._rebuild_best()
        return True

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

    def rejection(self, prefix: IPv4Network) -> str | None:
        """Why the import filter rejects ``prefix`` (a counter name), or None when it accepts it."""
        length = prefix.prefixlen
        if length == 0:
            return "rejected_default_route"
        address = int(prefix.network_address)
        if _inside(address, length, self._own_bits):
            return "rejected_own_block"
        if not _inside(address, length, self._pool_bits):
            return "rejected_outside_pools"
        return None

    # -- events -----------------------------------------------------------------------------

    def apply(self, event: protocol.Event) -> bool:
        """Feed one parsed protocol event; return whether best() may have changed."""
        match event:
            case protocol.RoutesAnnounced(peer, nexthop, prefixes, originator_id, cluster_list, attrs):
                self.announce_many(peer, nexthop, prefixes, originator_id, cluster_list, attrs)
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
                      cluster_list: tuple[IPv4Address, ...] = (), attributes: str = "") -> None:
        """``prefixes`` from ``peer`` via ``nexthop``: the hot loop of learning (one UPDATE)."""
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
        path = _Path(nexthop, originator_id, tuple(cluster_list), attributes)
        peer = self._peer_ids.setdefault(peer, peer)
        fresh = self._fresh.setdefault(peer, {})
        stale = self._stale.get(peer)
        best, rejection, counters, before = self._best, self.rejection, self.counters, self._before
        dirty = self._dirty
        for prefix in prefixes:
            if type(prefix) is not protocol.Prefix and type(prefix) is not IPv4Network:
                self._malformed(peer, prefix)
                continue
            fresh[prefix] = path
            if stale:
                self._unstale(peer, stale, prefix)
            reason = rejection(prefix)
            if reason is not None:
                counters[reason] += 1
                log.debug("route rejected by import filter",
                          extra={"peer": str(peer), "prefix": str(prefix), "reason": reason})
                continue
            current = best.get(prefix)
            # A fresh path wins over a stale one, then the lowest peer address (same peer: replace).
            if current is None or current.stale or current.route.peer is peer or peer < current.route.peer:
                if before is not None and prefix not in before:
                    before[prefix] = current.route if current is not None else None
                if dirty is not None:
                    dirty.add(prefix)
                best[prefix] = _Best(path.route(prefix, peer), False)
                self._frozen = None

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
                self._choose(prefix, accepted=True)

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

    def _choose(self, prefix: IPv4Network, accepted: bool = False) -> None:
        """Pick ``prefix``'s best path again from every peer's paths (after its best one changed).
        ``accepted``: the import filter is known to accept it (it had a best path)."""
        self._frozen = None
        chosen = self._candidate(prefix, None, accepted)
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

    def _candidate(self, prefix: IPv4Network, now: float | None, accepted: bool = False) -> _Best | None:
        if not accepted and self.rejection(prefix) is not None:
            return None
        found: tuple[IPv4Address, _Path] | None = None
        for peer, paths in self._fresh.items():
            path = paths.get(prefix)
            if path is not None and (found is None or peer < found[0]):
                found = (peer, path)
        if found is not None:
            return _Best(found[1].route(prefix, found[0]), False)
        for peer, stale in self._stale.items():
            entry = stale.get(prefix)
            if entry is not None and (now is None or entry[1] > now) and (found is None or peer < found[0]):
                found = (peer, entry[0])
        return None if found is None else _Best(found[1].route(prefix, found[0]), True)

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
        held = self._fresh.get(peer, {}).keys() | self._stale.get(peer, {}).keys()
        return frozenset(p for p in held if self.rejection(p) is None)

    def route_count(self, peer: IPv4Address) -> int:
        peer = self._peer_ids.get(peer, peer)
        return len(self._fresh.get(peer, {})) + len(self._stale.get(peer, {}))


def _bits(networks: Iterable[IPv4Network]) -> tuple[tuple[int, int], ...]:
    """(network, prefix length) as integers, for ``_inside``."""
    return tuple((int(n.network_address), n.prefixlen) for n in networks)


def _inside(address: int, length: int, networks: tuple[tuple[int, int], ...]) -> bool:
    """Whether the prefix ``address/length`` is equal to or inside one of ``networks``."""
    for network, net_len in networks:
        if net_len <= length and (address ^ network) >> (32 - net_len) == 0:
            return True
    return False
