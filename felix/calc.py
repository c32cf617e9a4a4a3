"""Desired routes of one node, computed from a frozen snapshot. Pure: no I/O, no pyroute2.

Rules (Calico's, see CALICO-REFERENCE.md "Routes Felix and BIRD write"):

- every workload on this node: ``<ip>/32 dev <iface> scope link``;
- every block affine to this node: ``blackhole <block>``, except /32 blocks (a blackhole /32 would
  swallow the one address it covers);
- every address borrowed from one of our blocks by another node X (``Borrowed``: IPAM found no
  block for X and took a free address of ours): ``<ip>/32 via <X>`` from the datastore, direct or
  through the pool's tunnel as an affinity route would go, so the blackhole never swallows it
  (and wins over BGP's copy of it, which the import policy accepts from X alone). Elsewhere a
  borrowed /32 is like a remote block: learned over BGP (X advertises it), or from the datastore
  in VXLAN pools and without BGP;
- every learned BGP route: ``<prefix> via <gateway>`` (no dev: the kernel resolves the next hop).
  Learned routes arrive filtered: ``bgp.rib`` (rules in ``bgp.policy``) is the one import filter
  (inside a pool, not a default route, not in our own blocks, from the node that owns the
  prefix); the calculation takes what it is given;
- workloads of other nodes produce nothing (their blocks arrive as learned routes, or from affinities);
- encapsulation per pool (``PoolEncap``; Calico's ``ipipMode`` / ``vxlanMode``): a learned route in an
  IPIP pool goes ``via <gw> dev tunl0 onlink`` (CrossSubnet: only when the gateway is outside our
  subnet); in VXLAN pools every remote block affine to a node becomes
  ``<block> via <its VTEP> dev vxlan.calico onlink`` (CrossSubnet: ``via <its IP>`` inside our
  subnet), from the datastore's affinities as Calico does, overriding a learned route. A node
  without a VTEP yet keeps its learned route if there is one, else gets none (``unroutable`` says
  why), never a broken one. Without BGP (``bgp=False``: Calico's
  ``CALICO_NETWORKING_BACKEND`` none / vxlan) every remote block comes from its affinity: direct
  ``via <node IP>`` (flannel's host-gw), or the pool's tunnel.

Conflicts are resolved by value, never by input order, so the result is a function of the *set* of
inputs: a local workload beats a blackhole beats a borrowed /32 beats an affinity route beats a
learned route on the same destination; between equals the smallest (sorted) candidate wins.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from itertools import compress, repeat
from operator import eq, itemgetter, not_
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType

PROTO = 80
"""Route protocol number on every route we write (Felix's own number); ``route_is_ours`` tests it."""

NEVER, ALWAYS, CROSS_SUBNET = "Never", "Always", "CrossSubnet"
VXLAN_DEV, IPIP_DEV = "vxlan.calico", "tunl0"

TYPES = frozenset({"unicast", "blackhole"})
SCOPES = frozenset({"link", "universe"})


@dataclass(frozen=True)
class Block:
    """An IPAM block affine to ``node`` (IPAMBlock ``affinity: host:<node>``)."""

    cidr: IPv4Network
    node: str

    def __hash__(self) -> int:  # from ``_key``: an IPv4Network hash is Python code (100k blocks)
        return hash((_key(self.cidr), self.node))


@dataclass(frozen=True)
class Workload:
    """A WorkloadEndpoint's IPv4 address and host-side interface (``cali`` + 11 hex)."""

    ip: IPv4Address
    iface: str
    node: str
    name: str


@dataclass(frozen=True)
class Borrowed:
    """An address of a block affine to one node, allocated to a workload on another, ``node``
    (the allocation's recorded ``node`` attribute differs from the block's affinity)."""

    ip: IPv4Address
    node: str


class RemoteRoute(tuple):
    """A route learned over BGP: its prefix as ``key`` (``dst_key``; ``prefix`` is the
    ``IPv4Network``, built on demand), its next hop, and ``source``, the peer it came from (for
    the reason string). A ``(key, via)`` tuple whose ``via``, ``(gateway, source)``, is shared by
    the routes of one UPDATE (``many``): the calculation keeps only the via
    per prefix, so 100k learned routes hold no object each there, and a burst of them is made
    in C (a frozen dataclass cost ~1.1 us a route to construct, and 7 MB at 100k held).

    >>> r = RemoteRoute(dst_key("10.244.1.0/26"), IPv4Address("10.0.0.2"), "10.0.0.2")
    >>> r.prefix, r.gateway, r.source, r == RemoteRoute(r.key, *r.via)
    (IPv4Network('10.244.1.0/26'), IPv4Address('10.0.0.2'), '10.0.0.2', True)
    """

    __slots__ = ()

    def __new__(cls, key: int, gateway: IPv4Address, source: str) -> RemoteRoute:
        _check_key(key, "learned route")
        return tuple.__new__(cls, (key, (gateway, source)))

    @classmethod
    def many(cls, keys: Iterable[int], vias: Iterable[tuple[IPv4Address, str]]) -> list[RemoteRoute]:
        """The route at each key via the via beside it (``(gateway, source)`` tuples, shared by
        the routes of one UPDATE). The keys are not checked again: they come from a parser that
        checked them (``bgp.protocol``)."""
        return list(map(tuple.__new__, repeat(cls), zip(keys, vias)))

    key = property(itemgetter(0))
    via = property(itemgetter(1), doc="(gateway, source), shared by the routes of one run")

    @property
    def gateway(self) -> IPv4Address:
        return self[1][0]

    @property
    def source(self) -> str:
        return self[1][1]

    def __hash__(self) -> int:  # from the address's integer: IPv4Address.__hash__ is Python code
        return hash((self[0], self[1][0]._ip, self[1][1]))

    @property
    def prefix(self) -> IPv4Network:
        return key_network(self[0])

    def __repr__(self) -> str:
        return f"RemoteRoute(key={key_text(self[0])}, gateway={self[1][0]!r}, source={self[1][1]!r})"


@dataclass(frozen=True)
class PoolEncap:
    """A pool's encapsulation (``ipipMode`` / ``vxlanMode``: Never | Always | CrossSubnet)."""

    cidr: IPv4Network
    ipip: str = NEVER
    vxlan: str = NEVER


@dataclass(frozen=True)
class Host:
    """A node's addresses as the routes need them: its IP with prefix (CrossSubnet compares
    subnets) and its VXLAN tunnel endpoint (address and MAC), once it has one."""

    name: str
    ip: IPv4Interface | None
    vtep_ip: IPv4Address | None = None
    vtep_mac: str | None = None


@dataclass(frozen=True)
class CalcInput:
    node: str
    pools: frozenset[IPv4Network]
    blocks: frozenset[Block]
    workloads: frozenset[Workload]
    learned: frozenset[RemoteRoute]
    encap: frozenset[PoolEncap] = frozenset()  # a pool missing here is Never / Never
    hosts: frozenset[Host] = frozenset()
    bgp: bool = True  # False: no BGP (backend none / vxlan), remote blocks from affinities
    borrowed: frozenset[Borrowed] = frozenset()  # of every node's blocks


@dataclass(frozen=True, slots=True)
class DesiredRoute:
    """One route as we want it in the kernel. ``key`` is its destination (``dst_key``: one int,
    what every desired map is keyed by; ``dst`` is the ``IPv4Network``, built on demand for
    display). ``dev is None`` for gateway and blackhole routes.

    >>> r = DesiredRoute(dst_key(IPv4Network("10.244.1.0/26")), "blackhole", None, None,
    ...                  "universe", "local block")
    >>> r.dst, key_text(r.key)
    (IPv4Network('10.244.1.0/26'), '10.244.1.0/26')
    """

    key: int
    type: str
    dev: str | None
    gateway: IPv4Address | None
    scope: str
    reason: str
    onlink: bool = False  # ``via <gw> dev <tunnel> onlink``: IPIP and VXLAN routes (gw not on a subnet)

    def __post_init__(self) -> None:
        _check_key(self.key, "route")
        if self.type not in TYPES or self.scope not in SCOPES:
            raise ValueError(f"bad route {key_text(self.key)}: type={self.type!r} scope={self.scope!r}")

    @property
    def dst(self) -> IPv4Network:
        return key_network(self.key)


# -- destination keys: one int per IPv4 destination, ``prefix length << 32 | address`` ----------
# (``felix.rtnl.route_key`` packs the same from a dumped route). An ``IPv4Network`` is ~260 bytes
# (an object with a ``__dict__``, its address object, the address's int) and its hash is three
# Python calls; a key is one int (~32 bytes) hashed in C. The address sits in the low bits because
# a dict or set indexes by an int's low bits: with the length there, the keys of 100k /26 blocks
# (64 addresses apart) shared their low 14 bits and probed long collision chains (a dict of them
# built ~2.5x slower). Keys do not sort as networks do (a /24 sorts before every /26):
# ``network_order`` is the sort key wherever the order is shown or matters. Everything that keeps
# or compares destinations by the 100k uses keys; what displays one converts here.

LENGTH_SHIFT = 32
"""A key's prefix length is ``key >> LENGTH_SHIFT``."""
ADDRESS_MASK = 0xFFFFFFFF
"""A key's address is ``key & ADDRESS_MASK``."""
HOST = 32 << LENGTH_SHIFT
"""``address | HOST`` is the key of ``address/32`` (an address as an int)."""


def dst_key(dst: IPv4Network | str) -> int:
    """The key of ``dst`` (a network, or its text: host bits set are rejected, as
    ``IPv4Network`` rejects them).

    >>> dst_key("10.0.0.0/8") == 8 << 32 | 10 << 24
    True
    >>> dst_key("10.244.1.5/32") == int(IPv4Address("10.244.1.5")) | HOST
    True
    """
    if dst.__class__ is str:
        dst = IPv4Network(dst)
    return _key(dst)


def network_key(address: int, prefixlen: int) -> int:
    """The key of (address, prefix length) as integers; ValueError if either is out of range or
    the address has host bits set.

    >>> network_key(0x0AF40140, 26) == dst_key("10.244.1.64/26")
    True
    """
    if not 0 <= prefixlen <= 32 or not 0 <= address <= 0xFFFFFFFF:
        raise ValueError(f"bad destination {address:#x}/{prefixlen}: out of range")
    if address & (0xFFFFFFFF >> prefixlen if prefixlen < 32 else 0):
        raise ValueError(f"bad destination {_dotted(address)}/{prefixlen}: host bits set")
    return prefixlen << LENGTH_SHIFT | address


def key_network(key: int) -> IPv4Network:
    """The ``IPv4Network`` of a key (for display and comparison with one).

    >>> key_network(dst_key("10.244.1.64/26"))
    IPv4Network('10.244.1.64/26')
    """
    return IPv4Network((key & ADDRESS_MASK, key >> LENGTH_SHIFT))


def key_text(key: int) -> str:
    """``a.b.c.d/len`` of a key, without building an ``IPv4Network``.

    >>> key_text(dst_key("10.244.1.0/26"))
    '10.244.1.0/26'
    """
    return f"{_dotted(key & ADDRESS_MASK)}/{key >> LENGTH_SHIFT}"


def network_order(key: int) -> int:
    """A sort key that orders destination keys as their networks sort (address, then length),
    which the keys themselves do not (the length is their high bits).

    >>> keys = [dst_key("10.244.1.64/26"), dst_key("10.244.2.0/24")]
    >>> [key_text(k) for k in sorted(keys)], [key_text(k) for k in sorted(keys, key=network_order)]
    (['10.244.2.0/24', '10.244.1.64/26'], ['10.244.1.64/26', '10.244.2.0/24'])
    """
    return (key & ADDRESS_MASK) << 6 | key >> LENGTH_SHIFT


def _dotted(address: int) -> str:
    return f"{address >> 24 & 0xFF}.{address >> 16 & 0xFF}.{address >> 8 & 0xFF}.{address & 0xFF}"


def _check_key(key, what: str) -> None:
    """A valid key (a route's ``__post_init__``: cheap, integer arithmetic only)."""
    if key.__class__ is not int:
        raise TypeError(f"bad {what} destination {key!r}: want an int key (felix.calc.dst_key)")
    plen = key >> LENGTH_SHIFT
    if plen > 32 or key < 0 or key & (0xFFFFFFFF >> plen if plen < 32 else 0):
        raise ValueError(f"bad {what} destination {key:#x}: not a valid key (host bits set, "
                         f"or a prefix length above 32)")


def desired_routes(inp: CalcInput) -> Mapping[int, DesiredRoute]:
    """The routes this node should have, keyed by destination (``dst_key``; read-only mapping,
    in network order: ``network_order``)."""
    own_blocks = _own_blocks(inp)
    ctx = _Context(inp)
    routes: dict[int, DesiredRoute] = {}
    # Lowest precedence first; a later layer overwrites an earlier one on the same dst.
    _merge(routes, _learned_routes(inp.learned, ctx))
    _merge(routes, ctx.affinity_routes())
    _merge(routes, ctx.borrowed_routes(own_blocks))
    _merge(routes, _blackhole_routes(own_blocks))
    _merge(routes, _workload_routes(inp.workloads, inp.node))
    return MappingProxyType({key: routes[key] for key in sorted(routes, key=network_order)})


def unroutable(inp: CalcInput) -> dict[IPv4Network, str]:
    """Remote blocks that should be routed from their affinity but cannot be yet, and why (e.g. a
    node without a VTEP MAC): shown by ``node routes``, retried when the Node changes."""
    ctx = _Context(inp)
    ctx.affinity_routes()
    ctx.borrowed_routes(_own_blocks(inp))
    return dict(sorted(ctx.problems.items()))


def in_own_block(prefix: IPv4Network, own_blocks: Iterable[IPv4Network]) -> bool:
    """Equal to or inside one of our blocks: then the datastore, not BGP, says where it goes (a
    blackhole, a local workload, or a /32 to the node that borrowed it). The import policy
    (``bgp.policy``, configured with the same blocks) drops such a prefix, except a borrowed /32
    from its holder, which ``borrowed_routes`` supplies as well (and wins); ``cluster.export_prefixes``
    advertises a local workload's /32 outside them."""
    return any(prefix.subnet_of(block) for block in own_blocks)


def _key(dst: IPv4Network) -> int:
    """``dst_key`` of a network: it reads ipaddress's own slots (``_ip``, ``_prefixlen``), since
    ``int()`` and ``.prefixlen`` are Python-level calls."""
    return dst._prefixlen << LENGTH_SHIFT | dst.network_address._ip


def _bits(networks: Iterable[IPv4Network]) -> list[tuple[int, int, int, IPv4Network]]:
    """(address, mask, length, network) of each: ``subnet_of`` in integers."""
    return [(n.network_address._ip, n.netmask._ip, n._prefixlen, n) for n in networks]


def _inside(address: int, length: int, bits: list[tuple[int, int, int, IPv4Network]]
            ) -> IPv4Network | None:
    """The first of ``bits`` that (address, length) is equal to or inside, if any."""
    for net_address, mask, net_length, net in bits:
        if length >= net_length and address & mask == net_address:
            return net
    return None


_NO_POOL = PoolEncap(IPv4Network("0.0.0.0/0"))  # what a destination outside every pool gets: Never / Never


def _own_blocks(inp: CalcInput) -> list[IPv4Network]:
    return [b.cidr for b in inp.blocks if b.node == inp.node]


class _Context:
    """Pools, hosts and our own subnet, indexed once per calculation."""

    def __init__(self, inp: CalcInput) -> None:
        self.inp = inp
        self.encap = {p.cidr: p for p in inp.encap}
        self.hosts = {h.name: h for h in inp.hosts}
        me = self.hosts.get(inp.node)
        self.subnet = me.ip.network if me is not None and me.ip is not None else None
        self.problems: dict[IPv4Network, str] = {}
        self._reasons: dict[tuple[str, str, str], str] = {}
        # (id of the pool, gateway, peer) -> (tunnel, reason, onlink) of a learned route
        self.learned_paths: dict[tuple[int, int, str], tuple[str | None, str, bool]] = {}
        # (address, mask, length, cidr) per pool, in the frozenset's order: ``subnet_of`` in
        # integers (ipaddress's own was most of a rebuild's time at 100k blocks)
        self._pools = _bits(inp.pools)
        # each pool's encapsulation by its position in _pools: no IPv4Network hash per route
        self._pool_encap = {id(cidr): self.encap.get(cidr, PoolEncap(cidr)) for cidr in inp.pools}
        # whether a learned route's path can depend on its pool (else none is tunnelled)
        self.ipip = any(p.ipip != NEVER for p in self._pool_encap.values())

    def pool_cidr(self, key: int) -> IPv4Network | None:
        """The first pool (in ``inp.pools`` order) that destination ``key`` is inside, if any."""
        return _inside(key & ADDRESS_MASK, key >> LENGTH_SHIFT, self._pools)

    def pool_of(self, key: int) -> PoolEncap:
        cidr = self.pool_cidr(key)
        if cidr is None:
            return _NO_POOL
        return self._pool_encap[id(cidr)]

    def same_subnet(self, ip: IPv4Address) -> bool:
        return self.subnet is not None and ip in self.subnet

    def tunnelled(self, mode: str, ip: IPv4Address) -> bool:
        return mode == ALWAYS or (mode == CROSS_SUBNET and not self.same_subnet(ip))

    def affinity_routes(self) -> list[DesiredRoute]:
        out = []
        # by _key, not by IPv4Network (hash, int): a rebuild at 100k blocks spent most of its time there
        remote = _first_per_key((b for b in self.inp.blocks if b.node != self.inp.node),
                                key=lambda b: _key(b.cidr), order=lambda b: b.node)
        for key, block in sorted(((_key(b.cidr), b) for b in remote), key=lambda kb: kb[0]):
            cidr = self.pool_cidr(key)
            if cidr is None:
                continue  # outside every pool: never routed (the import filter's rule)
            route = self._route_to(key, block.cidr, block.node, self._pool_encap[id(cidr)],
                                   "block affinity", bgp_brings_it=self.inp.bgp)
            if route is not None:
                out.append(route)
        return out

    def borrowed_routes(self, own_blocks: list[IPv4Network]) -> list[DesiredRoute]:
        """A /32 to the node holding each address borrowed by another node: always for one in
        our own blocks (BGP's copy is filtered out here), elsewhere as for an affinity."""
        out = []
        others = (b for b in self.inp.borrowed if b.node != self.inp.node)
        for b in sorted(_first_per_key(others, key=lambda b: b.ip, order=lambda b: b.node),
                        key=lambda b: b.ip):
            dst = IPv4Network(b.ip)
            key = _key(dst)
            cidr = self.pool_cidr(key)
            if cidr is None:
                continue  # outside every pool: never routed (the import filter's rule)
            ours = in_own_block(dst, own_blocks)
            route = self._route_to(key, dst, b.node, self.encap.get(cidr, PoolEncap(cidr)),
                                   "borrowed from our block" if ours else "borrowed",
                                   bgp_brings_it=self.inp.bgp and not ours)
            if route is not None:
                out.append(route)
        return out

    def _route_to(self, key: int, dst: IPv4Network, node: str, pool: PoolEncap, why: str, *,
                  bgp_brings_it: bool) -> DesiredRoute | None:
        """``dst`` (``key``) via ``node``, directly or through the pool's tunnel; None when BGP brings it
        (a pool without VXLAN) or when the node's addresses are not known yet (``problems``)."""
        if pool.vxlan == NEVER and bgp_brings_it:
            return None
        host = self.hosts.get(node)
        if host is None or host.ip is None:
            self.problems[dst] = f"node {node} has no IPv4 address yet"
            return None
        node_ip = host.ip.ip
        if pool.vxlan != NEVER and self.tunnelled(pool.vxlan, node_ip):
            if host.vtep_ip is None or host.vtep_mac is None:
                self.problems[dst] = f"node {node} has no VXLAN tunnel address and MAC yet"
                return None
            return _via(key, host.vtep_ip, VXLAN_DEV, self._reason("vxlan", node, why))
        if pool.vxlan == NEVER and pool.ipip != NEVER and self.tunnelled(pool.ipip, node_ip):
            return _via(key, node_ip, IPIP_DEV, self._reason("ipip", node, why))
        return _via(key, node_ip, None, self._reason("direct", node, why))

    def _reason(self, path: str, node: str, why: str) -> str:
        """One string per (path, node, why), shared by all the routes it explains (100k blocks
        of 1000 nodes: 100k strings otherwise)."""
        key = (path, node, why)
        reason = self._reasons.get(key)
        if reason is None:
            reason = (f"direct to {node} ({why})" if path == "direct"
                      else f"{path} to {node}" + _suffix(why))
            self._reasons[key] = reason
        return reason


def _suffix(why: str) -> str:
    # Affinity routes keep their reasons ("vxlan to n2"): tests and status output know them.
    return "" if why == "block affinity" else f" ({why})"


def _via(key: int, gateway: IPv4Address, tunnel: str | None, reason: str) -> DesiredRoute:
    return DesiredRoute(key=key, type="unicast", dev=tunnel, gateway=gateway, scope="universe",
                        reason=reason, onlink=tunnel is not None)


def _merge(routes: dict[int, DesiredRoute], layer: Iterable[DesiredRoute]) -> None:
    for route in layer:
        routes[route.key] = route


def _workload_routes(workloads: Iterable[Workload], node: str) -> list[DesiredRoute]:
    local = [w for w in workloads if w.node == node]
    # Two endpoints claiming one IP is a datastore error; pick one deterministically.
    winners = _first_per_key(local, key=lambda w: w.ip, order=lambda w: (w.iface, w.name))
    return [workload_route(w.ip, w.iface, w.name) for w in winners]


def workload_route(ip: IPv4Address, iface: str, name: str) -> DesiredRoute:
    """``<ip>/32 dev <iface> scope link``: also what the CNI plugin writes (``RouteTable.set_route``)
    so that the agent adopts the route instead of fighting it."""
    return DesiredRoute(key=ip._ip | HOST, type="unicast", dev=iface, gateway=None,
                        scope="link", reason=f"local workload {name}")


def _blackhole_routes(own_blocks: Iterable[IPv4Network]) -> list[DesiredRoute]:
    return [
        DesiredRoute(
            key=_key(cidr), type="blackhole", dev=None, gateway=None, scope="universe",
            reason="local block",
        )
        for cidr in set(own_blocks)
        if cidr.prefixlen < 32
    ]


def _learned_routes(learned: Iterable[RemoteRoute], ctx: _Context) -> list[DesiredRoute]:
    # bgp.rib filtered them and gives one best path per prefix; a set holding two for one prefix
    # (only a caller other than the agent) still gives one answer, whatever the order.
    winners = _first_per_key(learned, key=lambda r: r.key, order=lambda r: r.via)
    return [_learned_route(r.key, r.via, ctx) for r in winners]


def _learned_route(key: int, via: tuple[IPv4Address, str], ctx: _Context) -> DesiredRoute:
    """The route at ``key`` of a learned route via ``(gateway, source)`` (``RemoteRoute.via``)."""
    tunnel, reason, onlink = _learned_path(key, via, ctx)
    return DesiredRoute(key, "unicast", tunnel, via[0], "universe", reason, onlink)


def _learned_path(key: int, via: tuple[IPv4Address, str], ctx: _Context
                  ) -> tuple[str | None, str, bool]:
    """(tunnel, reason, onlink) of a learned route at ``key`` via ``(gateway, source)``."""
    return _path_in(ctx.pool_of(key), via, ctx)


def _learned_routes_of(keys: list[int], vias: list[tuple[IPv4Address, str]], ctx: _Context
                       ) -> list[DesiredRoute]:
    """``_learned_route`` of each key and via, the path decided once per via (vias are shared by
    the routes of one UPDATE) when no pool tunnels (then no route's path depends on its pool),
    else per route."""
    if ctx.ipip:
        paths = list(map(_learned_path, keys, vias, repeat(ctx)))
    else:
        ids = list(map(id, vias))
        by_id = {i: _path_in(_NO_POOL, via, ctx) for i, via in dict(zip(ids, vias)).items()}
        paths = list(map(by_id.__getitem__, ids))
    n = len(keys)
    return _unchecked_routes(keys, repeat("unicast", n), map(itemgetter(0), paths),
                             map(itemgetter(0), vias), repeat("universe", n),
                             map(itemgetter(1), paths), map(itemgetter(2), paths))


# Each field's slot, in ``fields`` order (what ``_unchecked_routes`` is given).
_ROUTE_SLOTS = tuple(getattr(DesiredRoute, f.name).__set__ for f in fields(DesiredRoute))
if [f.name for f in fields(DesiredRoute)] != ["key", "type", "dev", "gateway", "scope", "reason",
                                              "onlink"]:
    raise AssertionError("Bug: DesiredRoute's fields changed: update _unchecked_routes")


def _unchecked_routes(keys: list[int], *columns: Iterable) -> list[DesiredRoute]:
    """A ``DesiredRoute`` per key, from one column per further field (in ``fields`` order),
    made and filled in C without ``__post_init__``: for the keys of learned routes (checked by
    the BGP parser as they came in) and values made here. ~0.5 us a route, where ``__init__``
    with its checks is ~1.5 us (100k learned routes per burst)."""
    routes = list(map(object.__new__, repeat(DesiredRoute, len(keys))))
    for fill, column in zip(_ROUTE_SLOTS, (keys, *columns)):
        deque(map(fill, routes, column), maxlen=0)
    return routes


def _path_in(pool: PoolEncap, via: tuple[IPv4Address, str], ctx: _Context
             ) -> tuple[str | None, str, bool]:
    """(tunnel, reason, onlink) of a learned route in ``pool`` via ``(gateway, source)``."""
    gateway, source = via
    # The tunnel and the reason depend on (pool, gateway, peer) only: decided once for each
    # (a few per node), and every route of one shares its reason string (100k learned routes
    # built 100k strings, ~7 MB of the agent, and most of this function's time).
    path_key = (id(pool), gateway._ip, source)
    path = ctx.learned_paths.get(path_key)
    if path is None:
        # A VXLAN pool's blocks are routed from affinities (Calico's rule), which override this
        # layer; a learned route stays only as the fallback while the node has no VTEP yet (a
        # live switch to VXLAN then keeps the old path instead of dropping the block's traffic).
        tunnel = IPIP_DEV if pool.ipip != NEVER and ctx.tunnelled(pool.ipip, gateway) else None
        path = ctx.learned_paths[path_key] = (
            tunnel, f"learned from {source}" + (" (ipip)" if tunnel else ""), tunnel is not None)
    return path


def _first_per_key(items, *, key, order):
    """For each ``key(item)``, the item with the smallest ``order(item)``."""
    best = {}
    for item in items:
        k = key(item)
        if k not in best or order(item) < order(best[k]):
            best[k] = item
    return list(best.values())


def _workload_order(w: Workload) -> tuple[str, str]:
    return (w.iface, w.name)


class RouteCalc:
    """``desired_routes`` kept up to date incrementally, for the events that come by the thousand.

    Per destination it keeps the candidates of each layer: local workloads and accepted learned
    routes (changed by ``update``), and the route fixed by the rare inputs, a blackhole, a
    borrowed /32 or an affinity route (changed only by ``rebuild``: pools, encapsulation, hosts,
    blocks and the addresses borrowed from them, BGP on/off).
    A destination's winner is decided from its own candidates alone, by the same precedence and
    the same tie-breaks as ``desired_routes``, so ``desired`` always equals ``desired_routes`` of
    the same input however it was reached (tests/unit/test_felix_calc_incremental.py checks that).
    Both methods return the destinations whose route changed: what the route table must write.

    >>> calc = RouteCalc()
    >>> calc.rebuild(CalcInput(node="n1", pools=frozenset({IPv4Network("10.244.0.0/16")}),
    ...     blocks=frozenset(), workloads=frozenset(), learned=frozenset()))
    set()
    >>> w = Workload(IPv4Address("10.244.1.5"), "cali0123456789a", "n1", "default/web")
    >>> calc.update(workloads_added=[w]) == {dst_key("10.244.1.5/32")}
    True
    >>> calc.desired[dst_key("10.244.1.5/32")].dev
    'cali0123456789a'
    """

    def __init__(self) -> None:
        # The winner at each destination: a ``DesiredRoute``, or a learned route's via (shared by
        # the routes of one UPDATE), whose route ``desired`` builds when it is read: 100k learned
        # routes held a ``DesiredRoute`` each, ~9 MB of the agent.
        self._desired: dict[int, DesiredRoute | tuple] = {}
        # What ``desired_routes`` returns, kept up to date: read-only, by ``dst_key`` (not sorted)
        self.desired = DesiredView(self)
        self.problems: dict[IPv4Network, str] = {}  # ``unroutable`` of the input last rebuilt
        # How many desired routes carry each reason, for health probes and metrics (walking 100k
        # routes per probe stalled the loop for ~70 ms): learned winners as one number (each
        # one's reason needs its pool: three pool lookups per learned route when counted on
        # learn, on withdraw and when built), every other winner by its reason.
        self.learned_count = 0
        self.other_reasons: Counter[str] = Counter()
        self._node: str | None = None
        self._ctx: _Context | None = None
        self._own: list[IPv4Network] = []
        # The indexes, like ``desired``, are keyed by ``dst_key``.
        self._fixed: dict[int, DesiredRoute] = {}  # blackholes over affinity routes
        self._workloads: dict[int, set[Workload]] = {}  # local ones, by /32
        # Accepted ones, by prefix: the route's via (``RemoteRoute.via``, shared by the routes of
        # one UPDATE) while a prefix has one (nearly always; a one-item set per prefix was a
        # fifth of the agent's memory at 100k learned routes), else a set of vias. A prefix
        # whose one via wins is not here: its via is ``_desired``'s value (``_learned_at``), so
        # 100k learned routes fill one dict, not two (~5 MB).
        self._learned: dict[int, tuple | set[tuple]] = {}

    def rebuild(self, inp: CalcInput) -> set[int]:
        """Start again from a whole input (a rare global change); return what changed."""
        old_ctx, ctx = self._ctx, _Context(inp)
        self._node, self._ctx = inp.node, ctx
        self._own = _own_blocks(inp)
        fixed = ctx.affinity_routes()
        fixed += ctx.borrowed_routes(self._own)
        fixed += _blackhole_routes(self._own)
        self._fixed = {r.key: r for r in fixed}
        self.problems = dict(sorted(ctx.problems.items()))
        self._workloads, self._learned = {}, {}
        for w in inp.workloads:
            if w.node == inp.node:
                self._workloads.setdefault(w.ip._ip | HOST, set()).add(w)
        for key, via in inp.learned:
            _add_learned(self._learned, key, via)
        # Layer by layer into a new mapping, then compare.
        new = dict(self._fixed)
        for key in self._learned.keys() - new.keys():
            new[key] = self._winner(key)
        for key in self._workloads:
            new[key] = self._winner(key)
        old = self._desired
        changed = {key for key, value in old.items()
                   if not _same_route(key, value, old_ctx, new.get(key), ctx)}
        changed.update(new.keys() - old.keys())
        old.clear()
        old.update(new)
        self.other_reasons = Counter(v.reason for v in new.values() if v.__class__ is not tuple)
        self.learned_count = len(new) - self.other_reasons.total()
        self._learned = {key: via for key, via in self._learned.items() if new.get(key) is not via}
        return changed

    @property
    def own_blocks(self) -> frozenset[IPv4Network]:
        """This node's blocks as of the last rebuild (what ``in_own_block`` compares with)."""
        return frozenset(self._own)

    @property
    def reasons(self) -> Counter[str]:
        """How many desired routes carry each reason (built on demand: a walk of the learned
        winners; ``learned_count`` and ``other_reasons`` are the cheap read)."""
        ctx, desired = self._ctx, self._desired
        learned = Counter(_learned_path(key, via, ctx)[1] for key, via in desired.items()
                          if via.__class__ is tuple)
        return learned + self.other_reasons

    def update(
        self,
        *,
        workloads_added: Iterable[Workload] = (),
        workloads_removed: Iterable[Workload] = (),
        learned_added: Iterable[RemoteRoute] = (),
        learned_removed: Iterable[RemoteRoute] = (),
    ) -> set[int]:
        """Take workloads and learned routes that appeared or went (set semantics: adding what is
        there or removing what is not does nothing); return the destinations (keys) whose route
        changed. Removals are applied before additions."""
        if self._ctx is None:
            raise AssertionError("Bug: RouteCalc.update before the first rebuild")
        # Keys resolved at the end, from their candidates: from when a key is first touched,
        # ``_learned`` holds all of its learned candidates (``_touch``) and its ``_desired``
        # value may be out of date until it is resolved.
        touched: set[int] = set()
        # A learned route alone at an untouched prefix (nearly every one) is added or removed in
        # ``_desired`` at once (no copy in ``_learned``): in bulk (``_lone_removed``,
        # ``_lone_added``: the prefixes they did, ``gone`` and ``fresh``), or one by one when a
        # prefix comes twice; ``before`` keeps what such a prefix had before, for the latter.
        before: dict[int, DesiredRoute | tuple | None] = {}
        node, workloads, learned, desired = self._node, self._workloads, self._learned, self._desired
        touch = self._touch
        for w in workloads_removed:
            if w.node == node:
                key = w.ip._ip | HOST
                touch(key, touched)
                _discard(workloads, key, w)
        rest, gone, gone_vias = self._lone_removed(learned_removed, touched)
        for key, via in rest:
            if key not in learned and key not in touched:
                if desired.get(key) == via:  # its one candidate, and the winner
                    before.setdefault(key, via)
                    self._set_winner(key, via, None)
                continue  # else not a candidate: nothing to remove
            touch(key, touched)
            _discard_learned(learned, key, via)
        for w in workloads_added:
            if w.node == node:
                key = w.ip._ip | HOST
                touch(key, touched)
                workloads.setdefault(key, set()).add(w)
        rest, fresh = self._lone_added(learned_added, touched)
        for key, via in rest:
            if key not in desired and key not in learned and key not in touched:
                before.setdefault(key, None)  # no candidate yet: it wins
                self._set_winner(key, None, via)
                continue
            touch(key, touched)
            _add_learned(learned, key, via)
        changed = set(filter(self._resolve, touched))
        if before:  # changed unless what the prefix has now is what it had
            changed.difference_update(before)
            changed.update(key for key, value in before.items() if desired.get(key) != value)
        # Had a route and have none, or the reverse: changed. Removed and there again (announced
        # anew, or under a workload): changed unless it is the same route.
        again = gone & desired.keys()
        fresh.difference_update(before)  # removed one by one, there again: decided above
        changed = _union(changed, gone, fresh)
        if again:
            old = dict(gone_vias).__getitem__
            changed.difference_update([key for key in again if desired[key] == old(key)])
        return changed

    def _lone_removed(self, routes: Iterable[RemoteRoute], touched: set[int]
                      ) -> tuple[list[RemoteRoute], set[int], Iterable[tuple[int, tuple]]]:
        """Remove each of ``routes`` that is its prefix's one candidate and wins there, at a
        prefix not in ``touched``; return (the routes left for ``update`` to take one by one:
        those at other prefixes, every one if a prefix comes twice; the prefixes removed; their
        (key, via) pairs). Column operations in C over the burst: a withdrawal of 100k routes
        spent most of its calculation in per-route calls."""
        routes = routes if routes.__class__ is list else list(routes)
        keys = list(map(itemgetter(0), routes))
        every = set(keys)
        if len(every) != len(keys):
            return routes, set(), ()
        clash = self._learned.keys() & every  # other candidates there (iterates the smaller)
        if touched:
            clash |= every & touched
        routes, keys, rest = _split_off(clash, routes, keys)
        every -= clash
        vias = list(map(itemgetter(1), routes))
        # Equal vias share their gateway (the RIB's path): the comparison stays in C. Unequal:
        # not there, a no-op.
        won = list(map(eq, map(self._desired.get, keys), vias))
        hits = list(compress(keys, won))
        deque(map(self._desired.pop, hits), maxlen=0)
        self.learned_count -= len(hits)
        return rest, every if len(hits) == len(every) else set(hits), zip(hits, compress(vias, won))

    def _lone_added(self, routes: Iterable[RemoteRoute], touched: set[int]
                    ) -> tuple[list[RemoteRoute], set[int]]:
        """Add each of ``routes`` at a prefix with no candidate, not in ``touched``, as its
        winner; return (the routes left for ``update`` to take one by one: those at other
        prefixes, every one if a prefix comes twice; the prefixes added)."""
        routes = routes if routes.__class__ is list else list(routes)
        new = dict(routes)  # merged into _desired in C below (faster than pairs)
        if len(new) != len(routes):
            return routes, set()
        desired = self._desired
        clash = desired.keys() & new.keys()  # iterates the smaller
        if self._learned:
            clash |= self._learned.keys() & new.keys()
        if touched:
            clash |= new.keys() & touched
        rest = [(key, new.pop(key)) for key in clash]
        desired.update(new)
        self.learned_count += len(new)
        return rest, set(new)

    def _touch(self, key: int, touched: set[int]) -> None:
        """Add ``key`` to ``touched``, the first time copying the via that wins there alone into
        ``_learned`` (where ``update`` changes candidates)."""
        if key not in touched:
            touched.add(key)
            value = self._desired.get(key)
            if value.__class__ is tuple and key not in self._learned:
                self._learned[key] = value

    def _resolve(self, key: int) -> bool:
        """Recompute the winner at ``key`` from its candidates; True if it changed (the context
        is the same as the old winner's: a learned route's via decides its route)."""
        route = self._winner(key)
        learned = self._learned.get(key)
        if learned is not None and learned is route:  # a via alone that wins: kept in _desired
            del self._learned[key]
        old = self._desired.get(key)
        if route is old or (route is not None and old is not None and route == old):
            return False
        self._set_winner(key, old, route)
        return True

    def _set_winner(self, key: int, old: DesiredRoute | tuple | None,
                    route: DesiredRoute | tuple | None) -> None:
        """Replace ``old``, the winner at ``key``, with ``route`` (None: none), counting reasons."""
        if old.__class__ is tuple:
            self.learned_count -= 1
        elif old is not None:
            reasons = self.other_reasons
            reasons[old.reason] -= 1
            if not reasons[old.reason]:
                del reasons[old.reason]
        if route is None:
            del self._desired[key]
            return
        self._desired[key] = route
        if route.__class__ is tuple:
            self.learned_count += 1
        else:
            self.other_reasons[route.reason] += 1

    def _winner(self, key: int) -> DesiredRoute | tuple | None:
        """The route at ``key``, or the via of the learned route that wins there."""
        local = self._workloads.get(key)
        if local:
            w = min(local, key=_workload_order)
            return workload_route(w.ip, w.iface, w.name)
        fixed = self._fixed.get(key)
        if fixed is not None:
            return fixed
        learned = self._learned.get(key)
        if learned is None:
            return None
        if learned.__class__ is set:
            return min(learned)  # the lowest (gateway, source): order-independent
        return learned


class DesiredView(Mapping):
    """``RouteCalc.desired``: the desired routes by ``dst_key``, read-only, not sorted. A learned
    route is built when it is read (from its via and the calculation's context)."""

    __slots__ = ("_calc",)

    def __init__(self, calc: RouteCalc) -> None:
        self._calc = calc

    def __getitem__(self, key: int) -> DesiredRoute:
        return _route_of(key, self._calc._desired[key], self._calc._ctx)

    def get(self, key: int, default=None):
        value = self._calc._desired.get(key)
        return default if value is None else _route_of(key, value, self._calc._ctx)

    def __contains__(self, key: object) -> bool:
        return key in self._calc._desired

    def routes(self, keys: Iterable[int]) -> list[DesiredRoute]:
        """The routes at those of ``keys`` that are desired, in no particular order (what an
        incremental route apply writes): ``get`` of each, with the learned ones built together
        (``_learned_routes_of``), not one call chain per route.

        >>> calc = RouteCalc()
        >>> calc.rebuild(CalcInput(node="n1", pools=frozenset(), blocks=frozenset(),
        ...                        workloads=frozenset(), learned=frozenset()))
        set()
        >>> k = dst_key("10.244.1.0/26")
        >>> _ = calc.update(learned_added=[RemoteRoute(k, IPv4Address("10.0.0.2"), "10.0.0.2")])
        >>> calc.desired.routes([k, dst_key("10.0.0.0/8")]) == [calc.desired[k]]
        True
        """
        calc = self._calc
        keys = keys if keys.__class__ is list else list(keys)
        values = list(map(calc._desired.get, keys))
        learned = list(map(isinstance, values, repeat(tuple)))
        routes = list(filter(None, compress(values, map(not_, learned))))  # None: not desired
        if any(learned):
            routes += _learned_routes_of(list(compress(keys, learned)),
                                         list(compress(values, learned)), calc._ctx)
        return routes

    def __iter__(self) -> Iterator[int]:
        return iter(self._calc._desired)

    def __len__(self) -> int:
        return len(self._calc._desired)

    def snapshot(self) -> DesiredSnapshot:
        """Every route as it is now, each built when an iteration reaches it: the route table's
        full diff reads them in its thread while the calculation goes on. It holds two lists
        (keys and values), not a route per learned prefix."""
        values = self._calc._desired
        return DesiredSnapshot(list(values), list(values.values()), self._calc._ctx)


class DesiredSnapshot:
    """``DesiredView.snapshot()``: iterable as often as wanted (a full diff reads it a second
    time to find which routes of ours are not desired), each pass building the routes anew."""

    __slots__ = ("keys", "values", "ctx")

    def __init__(self, keys: list[int], values: list, ctx: _Context) -> None:
        self.keys, self.values, self.ctx = keys, values, ctx

    def __iter__(self) -> Iterator[DesiredRoute]:
        return map(_route_of, self.keys, self.values, repeat(self.ctx))

    def __len__(self) -> int:
        return len(self.keys)


def _route_of(key: int, value: DesiredRoute | tuple, ctx: _Context) -> DesiredRoute:
    """The route a ``RouteCalc._desired`` value stands for."""
    return _learned_route(key, value, ctx) if value.__class__ is tuple else value


def _same_route(key: int, old: DesiredRoute | tuple, old_ctx: _Context | None,
                new: DesiredRoute | tuple | None, new_ctx: _Context) -> bool:
    """Whether ``RouteCalc._desired`` values ``old`` and ``new`` (each in its context) stand for
    the same route: a learned route's tunnel and reason depend on the context too."""
    if old.__class__ is not tuple:
        return new == old
    return (new.__class__ is tuple and new == old
            and _learned_path(key, old, old_ctx) == _learned_path(key, new, new_ctx))


def _split_off(keys: set[int], routes: list, route_keys: list[int]) -> tuple[list, list[int], list]:
    """(``routes`` and their ``route_keys`` not at ``keys``, the routes at ``keys``), in C."""
    if not keys:
        return routes, route_keys, []
    at = list(map(keys.__contains__, route_keys))
    other = list(map(not_, at))
    return list(compress(routes, other)), list(compress(route_keys, other)), list(compress(routes, at))


def _union(*sets: set) -> set:
    """The union of ``sets``, made by updating the largest (they are not used again)."""
    largest = max(sets, key=len)
    for other in sets:
        if other is not largest:
            largest |= other
    return largest


def _add_learned(learned: dict, key: int, via: tuple) -> None:
    """Add a route's ``via`` at ``key`` of ``RouteCalc._learned`` (a via alone, or a set of two
    or more)."""
    found = learned.get(key)
    if found is None:
        learned[key] = via
    elif found.__class__ is set:
        found.add(via)
    elif found != via:
        learned[key] = {found, via}


def _discard_learned(learned: dict, key: int, via: tuple) -> int:
    """Remove a route's ``via`` from ``key`` of ``RouteCalc._learned`` (a set left with one via
    becomes that via); return ``key``."""
    found = learned.get(key)
    if found is None:
        return key
    if found.__class__ is set:
        found.discard(via)
        if len(found) == 1:
            learned[key] = next(iter(found))
    elif found == via:
        del learned[key]
    return key


def _discard(index: dict, key, item):
    """Remove ``item`` from ``index[key]`` (dropping an empty set); return ``key``."""
    found = index.get(key)
    if found is not None:
        found.discard(item)
        if not found:
            del index[key]
    return key
