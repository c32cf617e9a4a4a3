"""Desired routes of one node, computed from a frozen snapshot. Pure: no I/O, no pyroute2.

Rules (Calico's, see CALICO-REFERENCE.md "Routes Felix and BIRD write"):

- every workload on this node: ``<ip>/32 dev <iface> scope link``;
- every block affine to this node: ``blackhole <block>``, except /32 blocks (a blackhole /32 would
  swallow the one address it covers);
- every learned BGP route: ``<prefix> via <gateway>`` (no dev: the kernel resolves the next hop),
  unless the prefix is not inside any pool (import filter) or is equal to or inside one of our own
  blocks (ours wins);
- workloads of other nodes produce nothing (their blocks arrive as learned routes).

Conflicts are resolved by value, never by input order, so the result is a function of the *set* of
inputs: a local workload beats a blackhole beats a learned route on the same destination; between
equals the smallest (sorted) candidate wins.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

PROTO = 80
"""Route protocol number on every route we write (Felix's own number); ``route_is_ours`` tests it."""

TYPES = frozenset({"unicast", "blackhole"})
SCOPES = frozenset({"link", "universe"})


@dataclass(frozen=True)
class Block:
    """An IPAM block affine to ``node`` (IPAMBlock ``affinity: host:<node>``)."""

    cidr: IPv4Network
    node: str


@dataclass(frozen=True)
class Workload:
    """A WorkloadEndpoint's IPv4 address and host-side interface (``cali`` + 11 hex)."""

    ip: IPv4Address
    iface: str
    node: str
    name: str


@dataclass(frozen=True)
class RemoteRoute:
    """A route learned over BGP; ``source`` names the peer it came from (for the reason string)."""

    prefix: IPv4Network
    gateway: IPv4Address
    source: str


@dataclass(frozen=True)
class CalcInput:
    node: str
    pools: frozenset[IPv4Network]
    blocks: frozenset[Block]
    workloads: frozenset[Workload]
    learned: frozenset[RemoteRoute]


@dataclass(frozen=True)
class DesiredRoute:
    """One route as we want it in the kernel. ``dev is None`` for gateway and blackhole routes."""

    dst: IPv4Network
    type: str
    dev: str | None
    gateway: IPv4Address | None
    scope: str
    reason: str
    onlink: bool = False  # ``via <gw> dev <tunnel> onlink``: IPIP and VXLAN routes (gw not on a subnet)

    def __post_init__(self) -> None:
        if self.type not in TYPES or self.scope not in SCOPES:
            raise ValueError(f"bad route {self.dst}: type={self.type!r} scope={self.scope!r}")


def desired_routes(inp: CalcInput) -> Mapping[IPv4Network, DesiredRoute]:
    """The routes this node should have, keyed by destination (read-only mapping, sorted by dst)."""
    own_blocks = [b.cidr for b in inp.blocks if b.node == inp.node]
    routes: dict[IPv4Network, DesiredRoute] = {}
    # Lowest precedence first; a later layer overwrites an earlier one on the same dst.
    _merge(routes, _learned_routes(inp.learned, inp.pools, own_blocks))
    _merge(routes, _blackhole_routes(own_blocks))
    _merge(routes, _workload_routes(inp.workloads, inp.node))
    return MappingProxyType(dict(sorted(routes.items())))


def _merge(routes: dict[IPv4Network, DesiredRoute], layer: Iterable[DesiredRoute]) -> None:
    for route in layer:
        routes[route.dst] = route


def _workload_routes(workloads: Iterable[Workload], node: str) -> list[DesiredRoute]:
    local = [w for w in workloads if w.node == node]
    # Two endpoints claiming one IP is a datastore error; pick one deterministically.
    winners = _first_per_key(local, key=lambda w: w.ip, order=lambda w: (w.iface, w.name))
    return [workload_route(w.ip, w.iface, w.name) for w in winners]


def workload_route(ip: IPv4Address, iface: str, name: str) -> DesiredRoute:
    """``<ip>/32 dev <iface> scope link``: also what the CNI plugin writes (``RouteTable.set_route``)
    so that the agent adopts the route instead of fighting it."""
    return DesiredRoute(
        dst=IPv4Network(ip), type="unicast", dev=iface, gateway=None, scope="link",
        reason=f"local workload {name}",
    )


def _blackhole_routes(own_blocks: Iterable[IPv4Network]) -> list[DesiredRoute]:
    return [
        DesiredRoute(
            dst=cidr, type="blackhole", dev=None, gateway=None, scope="universe",
            reason="local block",
        )
        for cidr in set(own_blocks)
        if cidr.prefixlen < 32
    ]


def _learned_routes(
    learned: Iterable[RemoteRoute],
    pools: frozenset[IPv4Network],
    own_blocks: list[IPv4Network],
) -> list[DesiredRoute]:
    accepted = [r for r in learned if _importable(r.prefix, pools, own_blocks)]
    # Several peers may send one prefix; bgp/rib picks best paths, here we only need determinism.
    winners = _first_per_key(accepted, key=lambda r: r.prefix, order=lambda r: (r.gateway, r.source))
    return [
        DesiredRoute(
            dst=r.prefix, type="unicast", dev=None, gateway=r.gateway, scope="universe",
            reason=f"learned from {r.source}",
        )
        for r in winners
    ]


def _importable(
    prefix: IPv4Network, pools: frozenset[IPv4Network], own_blocks: list[IPv4Network]
) -> bool:
    """Inside some pool, and not equal to or inside one of our own blocks (ours wins)."""
    in_pool = any(prefix.subnet_of(pool) for pool in pools)
    in_own_block = any(prefix.subnet_of(block) for block in own_blocks)
    return in_pool and not in_own_block


def _first_per_key(items, *, key, order):
    """For each ``key(item)``, the item with the smallest ``order(item)``."""
    best = {}
    for item in items:
        k = key(item)
        if k not in best or order(item) < order(best[k]):
            best[k] = item
    return list(best.values())
