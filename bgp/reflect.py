"""RFC 4456 route reflection: which peers get which best path, with which attributes.

Purely computational; no I/O. The speaker feeds it the prefixes whose best path may have
changed (``Rib.take_dirty``) and sends the commands ``commands()`` renders.

Rules (RFC 4456 6-8), for a node with a cluster id (a route reflector) and iBGP peers only:
- a best path learned from a client goes to every other iBGP peer, clients and non-clients;
  one learned from a non-client goes to clients only; never back to the peer it came from;
- ORIGINATOR_ID: the source's router id (from its OPEN; its address until we saw one) unless the
  path already has one; CLUSTER_LIST: our cluster id prepended; the next hop, origin, AS path,
  LOCAL_PREF, MED and communities are unchanged.
- The Adj-RIB-Out (``out``) is what each target was sent: a best path that goes away, moves to
  another peer, or must no longer reach a target is withdrawn from exactly the targets that had it.

The result depends only on the current best paths and peers, never on the order of updates.

>>> from ipaddress import IPv4Address as A, IPv4Network as N
>>> from bgp.rib import LearnedRoute
>>> r = Reflector()
>>> _ = r.configure(A("244.0.0.1"), {A("10.0.0.1"): True, A("10.0.0.2"): True}, ())
>>> route = LearnedRoute(N("10.244.1.0/26"), A("10.0.0.1"), A("10.0.0.1"))
>>> changes = r.update([(route.prefix, route)], {})
>>> [line] = changes.commands()
>>> line.split(" nlri ")
['neighbor 10.0.0.2 announce attributes next-hop 10.0.0.1 originator-id 10.0.0.1 \
cluster-list [ 244.0.0.1 ]', '10.244.1.0/26']
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from bgp import protocol
from bgp.rib import LearnedRoute


@dataclass(frozen=True, slots=True)
class Reflected:
    """The attributes one reflected path carries (the same to every target)."""

    nexthop: IPv4Address
    originator_id: IPv4Address
    cluster_list: tuple[IPv4Address, ...]
    attributes: str = ""  # origin, AS path, LOCAL_PREF, MED, communities: passed on unchanged


@dataclass
class Changes:
    """Per target: announcements grouped by attributes, and withdrawals."""

    announce: dict[IPv4Address, dict[Reflected, list[IPv4Network]]] = field(default_factory=dict)
    withdraw: dict[IPv4Address, list[IPv4Network]] = field(default_factory=dict)

    def add(self, target: IPv4Address, prefix: IPv4Network, attrs: Reflected | None) -> None:
        if attrs is None:
            self.withdraw.setdefault(target, []).append(prefix)
        else:
            self.announce.setdefault(target, {}).setdefault(attrs, []).append(prefix)

    def __bool__(self) -> bool:
        return bool(self.announce or self.withdraw)

    def commands(self) -> list[str]:
        """Withdrawals first, then announcements; targets that get the same prefixes with the
        same attributes share one command (``neighbor A , neighbor B announce ...``)."""
        withdraw: dict[tuple[IPv4Network, ...], list[IPv4Address]] = {}
        for target, prefixes in self.withdraw.items():
            withdraw.setdefault(tuple(sorted(prefixes)), []).append(target)
        announce: dict[tuple[Reflected, tuple[IPv4Network, ...]], list[IPv4Address]] = {}
        for target, by_attrs in self.announce.items():
            for attrs, prefixes in by_attrs.items():
                announce.setdefault((attrs, tuple(sorted(prefixes))), []).append(target)
        lines = []
        for prefixes, targets in sorted(withdraw.items(), key=lambda kv: sorted(kv[1])):
            lines += protocol.withdraw_from_commands(targets, prefixes)
        for (attrs, prefixes), targets in sorted(announce.items(), key=lambda kv: sorted(kv[1])):
            lines += protocol.reflect_commands(targets, attrs.nexthop, attrs.originator_id,
                                               attrs.cluster_list, prefixes, attrs.attributes)
        return lines


class Reflector:
    def __init__(self) -> None:
        self.cluster_id: IPv4Address | None = None
        self._peers: dict[IPv4Address, bool] = {}  # iBGP peer -> is a route-reflector client
        # Adj-RIB-Out: prefix -> (targets, attributes); every target of a prefix gets the same.
        self._out: dict[IPv4Network, tuple[frozenset[IPv4Address], Reflected]] = {}

    def configure(self, cluster_id: IPv4Address | None, peers: Mapping[IPv4Address, bool],
                  routes: Iterable[LearnedRoute], router_ids: Mapping[IPv4Address, IPv4Address] = {}
                  ) -> Changes:
        """New cluster id / iBGP peers (address -> client); ``routes``: every best path. Targets
        no longer configured are forgotten without a withdrawal (their session is going)."""
        peers = dict(peers)
        if (cluster_id, peers) == (self.cluster_id, self._peers):
            return Changes()
        self.cluster_id, self._peers = cluster_id, peers
        for prefix, (targets, attrs) in list(self._out.items()):
            kept = frozenset(t for t in targets if t in peers)
            if kept:
                self._out[prefix] = (kept, attrs)
            else:
                del self._out[prefix]
        routes = {r.prefix: r for r in routes}
        return self.update([(p, routes.get(p)) for p in routes.keys() | self._out.keys()], router_ids)

    def update(self, best: Iterable[tuple[IPv4Network, LearnedRoute | None]],
               router_ids: Mapping[IPv4Address, IPv4Address]) -> Changes:
        """``best``: (prefix, its best path or None) for the prefixes that may have changed."""
        changes = Changes()
        for prefix, route in best:
            targets, attrs = self._desired(route, router_ids)
            old_targets, old_attrs = self._out.get(prefix, (frozenset(), None))
            for target in old_targets - targets:
                changes.add(target, prefix, None)
            for target in targets if attrs != old_attrs else targets - old_targets:
                changes.add(target, prefix, attrs)
            if targets:
                self._out[prefix] = (targets, attrs)
            else:
                self._out.pop(prefix, None)
        return changes

    def _desired(self, route: LearnedRoute | None, router_ids: Mapping[IPv4Address, IPv4Address]
                 ) -> tuple[frozenset[IPv4Address], Reflected | None]:
        if route is None or self.cluster_id is None:
            return frozenset(), None
        source = route.peer
        from_client = self._peers.get(source)
        if from_client is None:  # not an iBGP peer of ours: nothing to reflect
            return frozenset(), None
        targets = frozenset(t for t, client in self._peers.items()
                            if t != source and (from_client or client))
        if not targets:
            return frozenset(), None
        originator = route.originator_id or router_ids.get(source, source)
        return targets, Reflected(route.nexthop, originator, (self.cluster_id, *route.cluster_list),
                                  route.attributes)

    def out(self, target: IPv4Address) -> Changes:
        """Everything ``target`` should have (for a session that just came up)."""
        changes = Changes()
        for prefix, (targets, attrs) in self._out.items():
            if target in targets:
                changes.add(target, prefix, attrs)
        return changes

    def sent(self) -> dict[IPv4Address, dict[IPv4Network, Reflected]]:
        """The whole Adj-RIB-Out by target (for tests and status)."""
        out: dict[IPv4Address, dict[IPv4Network, Reflected]] = {}
        for prefix, (targets, attrs) in self._out.items():
            for target in targets:
                out.setdefault(target, {})[prefix] = attrs
        return out
